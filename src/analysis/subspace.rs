//! Subspace similarity between two adapters (Hu et al., 2021, LoRA, §7.2 and Figures 3–4):
//! `φ(A, B, i, j) = ‖U_Aᵢᵀ U_Bⱼ‖²_F / min(i, j)`, where `U_Aᵢ` holds the top-i singular
//! vectors of adapter A's factor (the right-singular vectors of LoRA's `A` `[r, d_in]`, the
//! left-singular vectors of `B` `[d_out, r]`: the directions in model space). φ is 1 when one
//! subspace contains the other and 0 when they are orthogonal.

use std::path::Path;

use nalgebra::DMatrix;

use crate::model::init;
use crate::peft::format::read_f32_tensors;

/// Which LoRA factor: `A` (`lora_A`, its right-singular vectors in the input space) or `B`
/// (`lora_B`, its left-singular vectors in the output space).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "A" | "a" => Some(Self::A),
            "B" | "b" => Some(Self::B),
            _ => None,
        }
    }
}

/// The orthonormal directions of `m` in model space, ordered by singular value: the columns of
/// `V` for `A` `[r, d]` (`A = UΣVᵀ`), of `U` for `B` `[d, r]`. `[d, r]`.
pub fn directions(m: &DMatrix<f64>, side: Side) -> DMatrix<f64> {
    // Both cases as the left-singular vectors of a `[d, r]` matrix.
    let tall = match side {
        Side::A => m.transpose(),
        Side::B => m.clone(),
    };
    let svd = tall.svd(true, false);
    let u = svd.u.expect("asked for U");
    let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
    order.sort_by(|&i, &j| svd.singular_values[j].total_cmp(&svd.singular_values[i]));
    DMatrix::from_fn(u.nrows(), order.len(), |row, col| u[(row, order[col])])
}

/// `φ(i, j)` for `i = 1..=r1` and `j = 1..=r2` (row `i − 1`, column `j − 1`) between two sets of
/// directions `[d, r1]` and `[d, r2]`.
pub fn phi(u1: &DMatrix<f64>, u2: &DMatrix<f64>) -> Result<Vec<Vec<f64>>, String> {
    if u1.nrows() != u2.nrows() {
        return Err(format!(
            "the two subspaces live in spaces of different sizes ({} and {})",
            u1.nrows(),
            u2.nrows()
        ));
    }
    // G[a, b] = ⟨u1_a, u2_b⟩²; φ(i, j) = Σ_{a<i, b<j} G[a, b] / min(i, j), by prefix sums.
    let g = (u1.transpose() * u2).map(|x| x * x);
    let (r1, r2) = (u1.ncols(), u2.ncols());
    let mut prefix = vec![vec![0.0; r2 + 1]; r1 + 1];
    for a in 0..r1 {
        for b in 0..r2 {
            prefix[a + 1][b + 1] = g[(a, b)] + prefix[a][b + 1] + prefix[a + 1][b] - prefix[a][b];
        }
    }
    Ok((1..=r1)
        .map(|i| (1..=r2).map(|j| prefix[i][j] / i.min(j) as f64).collect())
        .collect())
}

/// One LoRA factor of a saved adapter (PEFT's layout): `lora_A.weight` `[r, d_in]` or
/// `lora_B.weight` `[d_out, r]` of `module` (`model.layers.10.self_attn.q_proj`, with or without
/// PEFT's `base_model.model.` prefix).
pub fn lora_factor(dir: &Path, module: &str, side: Side) -> Result<DMatrix<f64>, String> {
    let path = dir.join(crate::peft::format::WEIGHTS_FILE);
    let tensors = read_f32_tensors(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let module = module.trim_start_matches("base_model.model.");
    let key = format!(
        "base_model.model.{module}.lora_{}.weight",
        if side == Side::A { "A" } else { "B" }
    );
    let (shape, values) = tensors.get(&key).ok_or_else(|| {
        let mut lora: Vec<&str> = tensors
            .keys()
            .filter(|k| k.ends_with(".lora_A.weight"))
            .map(|k| {
                k.trim_start_matches("base_model.model.")
                    .trim_end_matches(".lora_A.weight")
            })
            .collect();
        lora.sort_unstable();
        lora.truncate(4);
        format!(
            "{}: no LoRA factor {key} (modules look like {})",
            path.display(),
            if lora.is_empty() {
                "none: not a LoRA adapter".into()
            } else {
                lora.join(", ")
            }
        )
    })?;
    let [rows, cols] = shape[..] else {
        return Err(format!(
            "{}: {key} is not a matrix ({shape:?})",
            path.display()
        ));
    };
    Ok(DMatrix::from_row_iterator(
        rows,
        cols,
        values.iter().map(|&v| v as f64),
    ))
}

/// φ between the same LoRA factor of two saved adapters (any two ranks or seeds), and the
/// same between Gaussian matrices of their shapes (Figure 4's baseline) when `baseline`.
pub struct Similarity {
    pub phi: Vec<Vec<f64>>,
    pub random: Option<Vec<Vec<f64>>>,
}

pub fn adapter_similarity(
    a: &Path,
    b: &Path,
    module: &str,
    side: Side,
    baseline: bool,
) -> Result<Similarity, String> {
    let (ma, mb) = (lora_factor(a, module, side)?, lora_factor(b, module, side)?);
    let phi = phi(&directions(&ma, side), &directions(&mb, side))?;
    let random = baseline
        .then(|| {
            let (ra, rb) = (gaussian_like(&ma, 1), gaussian_like(&mb, 2));
            self::phi(&directions(&ra, side), &directions(&rb, side))
        })
        .transpose()?;
    Ok(Similarity { phi, random })
}

/// A matrix of the same shape with independent N(0, 1) entries: the baseline of Figure 4.
pub fn gaussian_like(m: &DMatrix<f64>, seed: u64) -> DMatrix<f64> {
    let v = init::normal_vec(&mut init::rng(seed), m.len(), 1.0);
    DMatrix::from_row_iterator(m.nrows(), m.ncols(), v.into_iter().map(f64::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// φ against NumPy on committed random matrices (scripts/make_subspace_fixture.py).
    #[test]
    fn phi_matches_numpy() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/analysis/subspace.json"
        ))
        .unwrap();
        let f: serde_json::Value = serde_json::from_str(&text).unwrap();
        let matrix = |k: &str| {
            let rows: Vec<Vec<f64>> = serde_json::from_value(f[k].clone()).unwrap();
            DMatrix::from_fn(rows.len(), rows[0].len(), |i, j| rows[i][j])
        };
        for (a, b, side, want) in [
            ("a8", "a16", Side::A, "phi_a"),
            ("b8", "b16", Side::B, "phi_b"),
        ] {
            let got = phi(&directions(&matrix(a), side), &directions(&matrix(b), side)).unwrap();
            let want: Vec<Vec<f64>> = serde_json::from_value(f[want].clone()).unwrap();
            assert_eq!((got.len(), got[0].len()), (want.len(), want[0].len()));
            for (gr, wr) in got.iter().zip(&want) {
                for (g, w) in gr.iter().zip(wr) {
                    assert!((g - w).abs() < 1e-6, "{side:?}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn an_adapter_with_itself_is_one_on_the_diagonal() {
        let a = gaussian_like(&DMatrix::zeros(8, 40), 3);
        let u = directions(&a, Side::A);
        let p = phi(&u, &u).unwrap();
        for (i, row) in p.iter().enumerate() {
            assert!((row[i] - 1.0).abs() < 1e-9, "{i}: {}", row[i]);
            // A subspace contains every smaller one of its own.
            assert!(row.iter().all(|&x| (x - 1.0).abs() < 1e-9));
        }
        // Orthogonal subspaces: 0.
        let e = |cols: &[usize]| DMatrix::from_fn(6, cols.len(), |r, c| f64::from(r == cols[c]));
        let p = phi(&e(&[0, 1]), &e(&[2, 3, 4])).unwrap();
        assert!(p.iter().flatten().all(|&x| x == 0.0));
        assert!(phi(&e(&[0]), &DMatrix::zeros(5, 1)).is_err());
    }
}
