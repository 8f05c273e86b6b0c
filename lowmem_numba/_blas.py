"""scipy's single-precision GEMM, callable from Numba-compiled code.

The address of ``scipy.linalg.cython_blas.sgemm`` is registered with LLVM under a
fixed symbol name, and an intrinsic calls that symbol.  Unlike a ctypes or cfunc
global, a symbol reference survives ``cache=True``: kernels compiled by one
process load in another.  The symbol name must never change once released (a
cached kernel referring to a name nobody registered would crash), so a change in
the binding gets a new name.

:func:`gemm` is the row-major entry point for kernels.  It validates every
argument, so OpenBLAS never reaches its own argument checks (which print to
stderr and return without computing), and no call can read or write outside the
arrays it is given.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import scipy
import scipy.linalg.cython_blas  # noqa: F401  (loads the module whose address we take)
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import get_cython_function_address, intrinsic

from ._compile import njit  # numba.njit whose cache=True never fails (see _compile)
from ._geometry import BLAS_INT_MAX

SGEMM_SYMBOL = "lowmem_numba_scipy_sgemm_lp64_v1"


def _blas_is_ilp64() -> bool:
    try:
        blas = scipy.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:  # older or unusual builds: cython_blas has always been LP64
        return False
    return bool(blas.get("has ilp64", False))


if _blas_is_ilp64():
    raise ImportError(
        "lowmem_numba calls scipy.linalg.cython_blas.sgemm with 32-bit integers, but this "
        f"scipy ({scipy.__version__}) reports an ILP64 BLAS; install a scipy built with LP64 BLAS"
    )

llvm.add_symbol(SGEMM_SYMBOL, get_cython_function_address("scipy.linalg.cython_blas", "sgemm"))


@intrinsic
def _sgemm_fortran(
    typingctx, transa, transb, m, n, k, alpha, a, a_offset, lda, b, b_offset, ldb, beta, c, c_offset, ldc
):
    """Column-major sgemm on arrays plus element offsets.

    Taking the arrays (not raw pointers) keeps them alive for the duration of the
    call; a bare pointer would let Numba free a temporary before BLAS reads it.
    """
    for array in (a, b, c):
        if not (isinstance(array, types.Array) and array.dtype == types.float32 and array.layout == "C"):
            return None
    sig = types.void(
        types.int64, types.int64, types.int64, types.int64, types.int64, types.float32,
        a, types.int64, types.int64, b, types.int64, types.int64, types.float32,
        c, types.int64, types.int64,
    )

    def codegen(context, builder, signature, args):
        (transa_v, transb_v, m_v, n_v, k_v, alpha_v, a_v, aoff, lda_v,
         b_v, boff, ldb_v, beta_v, c_v, coff, ldc_v) = args
        i8, i32, f32 = ir.IntType(8), ir.IntType(32), ir.FloatType()

        def by_ref(value, ty):
            if ty is i8 or ty is i32:
                value = builder.trunc(value, ty)
            return cgutils.alloca_once_value(builder, value)

        def data_at(array_type, array_value, offset):
            data = context.make_array(array_type)(context, builder, array_value).data
            return builder.gep(data, [offset])

        fnty = ir.FunctionType(
            ir.VoidType(),
            [i8.as_pointer(), i8.as_pointer(), i32.as_pointer(), i32.as_pointer(),
             i32.as_pointer(), f32.as_pointer(), f32.as_pointer(), i32.as_pointer(),
             f32.as_pointer(), i32.as_pointer(), f32.as_pointer(), f32.as_pointer(),
             i32.as_pointer()],
        )
        fn = cgutils.get_or_insert_function(builder.module, fnty, SGEMM_SYMBOL)
        builder.call(fn, [
            by_ref(transa_v, i8), by_ref(transb_v, i8),
            by_ref(m_v, i32), by_ref(n_v, i32), by_ref(k_v, i32),
            by_ref(alpha_v, f32),
            data_at(signature.args[6], a_v, aoff), by_ref(lda_v, i32),
            data_at(signature.args[9], b_v, boff), by_ref(ldb_v, i32),
            by_ref(beta_v, f32),
            data_at(signature.args[13], c_v, coff), by_ref(ldc_v, i32),
        ])
        return context.get_dummy_value()

    return sig, codegen


_N = ord("N")
_T = ord("T")


@njit(cache=True, nogil=True)
def _check_operand(rows, cols, offset, ld, size):
    # Row-major storage of a rows x cols block starting at `offset`.
    if ld < max(1, cols) or ld > BLAS_INT_MAX:
        raise ValueError("gemm: leading dimension out of range")
    if rows > 0 and cols > 0:
        if offset < 0 or offset + (rows - 1) * ld + cols > size:
            raise ValueError("gemm: operand block lies outside its array")


@njit(cache=True, nogil=True)
def gemm(trans_a, trans_b, m, n, k, alpha, a, a_offset, lda, b, b_offset, ldb, beta, c, c_offset, ldc):
    """Row-major ``C = alpha * op(A) @ op(B) + beta * C`` on float32 blocks.

    ``op(A)`` is m x k, ``op(B)`` is k x n and ``C`` is m x n.  Each operand is a
    block of a C-contiguous array, starting at an element offset with a leading
    dimension (row stride, in elements).  ``trans_a``/``trans_b`` say the stored
    block is the transpose (k x m, n x k).  With ``beta == 0`` the previous
    contents of C are ignored (even NaN), as BLAS specifies.

    Raises ValueError (before BLAS runs) on any size, leading dimension or offset
    that would make BLAS fail or touch memory outside the arrays.
    """
    if m < 0 or n < 0 or k < 0 or m > BLAS_INT_MAX or n > BLAS_INT_MAX or k > BLAS_INT_MAX:
        raise ValueError("gemm: dimension out of range")
    if trans_a:
        _check_operand(k, m, a_offset, lda, a.size)
    else:
        _check_operand(m, k, a_offset, lda, a.size)
    if trans_b:
        _check_operand(n, k, b_offset, ldb, b.size)
    else:
        _check_operand(k, n, b_offset, ldb, b.size)
    _check_operand(m, n, c_offset, ldc, c.size)
    if m == 0 or n == 0:
        return
    # Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
    _sgemm_fortran(
        _T if trans_b else _N, _T if trans_a else _N, n, m, k, alpha,
        b, b_offset, ldb, a, a_offset, lda, beta, c, c_offset, ldc,
    )
