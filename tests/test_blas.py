"""The sgemm binding: every transposition, offsets, leading dimensions, and
argument checks that stop OpenBLAS from ever seeing a bad call."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowmem_numba._blas import gemm

F1 = np.float32(1.0)


@given(
    m=st.integers(0, 9), n=st.integers(0, 9), k=st.integers(0, 9),
    trans_a=st.booleans(), trans_b=st.booleans(),
    pad=st.integers(0, 3), offset=st.integers(0, 5),
    alpha=st.sampled_from([1.0, -2.0, 0.5]), beta=st.sampled_from([0.0, 1.0, 3.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_gemm_matches_numpy(m, n, k, trans_a, trans_b, pad, offset, alpha, beta, seed):
    rng = np.random.default_rng(seed)
    a_rows, a_cols = (k, m) if trans_a else (m, k)
    b_rows, b_cols = (n, k) if trans_b else (k, n)
    # Blocks inside larger arrays, at an offset, with a padded leading dimension.
    lda, ldb, ldc = a_cols + pad, b_cols + pad, n + pad
    a = rng.integers(-3, 4, offset + a_rows * lda + 1).astype(np.float32)
    b = rng.integers(-3, 4, offset + b_rows * ldb + 1).astype(np.float32)
    c = rng.integers(-3, 4, offset + m * ldc + 1).astype(np.float32)
    block = lambda arr, rows, cols, ld: arr[offset: offset + rows * ld].reshape(rows, ld)[:, :cols]
    a_mat = block(a, a_rows, a_cols, lda).astype(np.float64)
    b_mat = block(b, b_rows, b_cols, ldb).astype(np.float64)
    expected_c = c.copy()
    c_block = block(expected_c, m, n, ldc)
    c_block[...] = alpha * (a_mat.T if trans_a else a_mat) @ (b_mat.T if trans_b else b_mat) + beta * c_block
    gemm(trans_a, trans_b, m, n, k, np.float32(alpha), a, offset, max(1, lda), b, offset, max(1, ldb),
         np.float32(beta), c, offset, max(1, ldc))
    np.testing.assert_array_equal(c, expected_c)


def test_beta_zero_ignores_nan_in_c():
    a = np.ones(4, np.float32)
    c = np.full(4, np.nan, np.float32)
    gemm(False, False, 2, 2, 2, F1, a, 0, 2, a, 0, 2, np.float32(0.0), c, 0, 2)
    np.testing.assert_array_equal(c, [2, 2, 2, 2])


@pytest.mark.parametrize(
    "args",
    [
        dict(m=-1), dict(k=2**31),
        dict(lda=1),             # lda < k
        dict(ldc=2),             # ldc < n
        dict(a_offset=-1),
        dict(a_offset=1),        # block runs past the end of a
        dict(c_offset=2),
        dict(m=3),               # c too small for 3 rows
    ],
)
def test_bad_arguments_raise_before_blas(args, capfd):
    call = dict(m=2, n=3, k=2, a_offset=0, lda=2, ldc=3, c_offset=0)
    call.update(args)
    a = np.ones(4, np.float32)
    b = np.ones(6, np.float32)
    c = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match="gemm"):
        gemm(False, False, call["m"], call["n"], call["k"], F1, a, call["a_offset"], call["lda"],
             b, 0, 3, np.float32(0.0), c, call["c_offset"], call["ldc"])
    np.testing.assert_array_equal(c, 0)
    assert "SGEMM" not in capfd.readouterr().err
