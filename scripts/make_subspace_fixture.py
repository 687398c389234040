"""Fixture for the subspace-similarity test (src/analysis/subspace.rs): random LoRA-shaped
factors and NumPy's φ between them, as the LoRA paper defines it (§7.2):

    φ(A, B, i, j) = ||U_A[:, :i]^T U_B[:, :j]||_F^2 / min(i, j)

with U the right-singular vectors of A-factors [r, d] and the left-singular vectors of
B-factors [d, r], each ordered by singular value (NumPy's SVD already orders them).

    python3 scripts/make_subspace_fixture.py   # writes tests/fixtures/analysis/subspace.json
"""

import json
from pathlib import Path

import numpy as np


def phi(u1, u2):
    r1, r2 = u1.shape[1], u2.shape[1]
    out = np.zeros((r1, r2))
    for i in range(1, r1 + 1):
        for j in range(1, r2 + 1):
            out[i - 1, j - 1] = np.linalg.norm(u1[:, :i].T @ u2[:, :j], "fro") ** 2 / min(i, j)
    return out


def main():
    rng = np.random.default_rng(0)
    d_in, d_out = 24, 20
    # Two "ranks" that share some directions: the r=16 factor contains a noisy copy of the r=8 one.
    a8 = rng.standard_normal((8, d_in))
    a16 = np.vstack([a8 + 0.3 * rng.standard_normal((8, d_in)), rng.standard_normal((8, d_in))])
    b8 = rng.standard_normal((d_out, 8))
    b16 = rng.standard_normal((d_out, 16))
    right = lambda a: np.linalg.svd(a, full_matrices=False)[2].T  # [d, r]
    left = lambda b: np.linalg.svd(b, full_matrices=False)[0]  # [d, r]
    out = {
        "a8": a8.tolist(), "a16": a16.tolist(), "b8": b8.tolist(), "b16": b16.tolist(),
        "phi_a": phi(right(a8), right(a16)).tolist(),
        "phi_b": phi(left(b8), left(b16)).tolist(),
    }
    path = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "analysis" / "subspace.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    print(path, "phi_a[0][0] =", out["phi_a"][0][0])


if __name__ == "__main__":
    main()
