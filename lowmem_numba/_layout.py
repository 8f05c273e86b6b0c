"""Memory layouts: NCHW (channels first) and NHWC (channels last).

Shapes are converted here; images are transposed between CHW and HWC by a
tiled parallel kernel.
"""

from __future__ import annotations

from numba import prange

from ._compile import njit  # numba.njit whose cache=True never fails (see _compile)
from ._tuning import TRANSPOSE_TILE

LAYOUTS = ("NCHW", "NHWC")



def check_layout(layout) -> str:
    """Require "NCHW" or "NHWC" (exactly; raises ValueError otherwise)."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f'layout must be "NCHW" or "NHWC"; got {layout!r}')
    return layout


def to_nchw_shape(shape, layout):
    """An input shape given in ``layout`` ((N,)C,H,W or (N,)H,W,C) as (N,)C,H,W.

    Anything that is not a sequence is returned as given, for
    :func:`lowmem_numba.make_geometry` to reject with a message naming ``x``.
    """
    try:
        shape = tuple(shape)
    except TypeError:
        return shape
    if layout == "NHWC" and len(shape) in (3, 4):
        return shape[:-3] + (shape[-1],) + shape[-3:-1]
    return shape


def from_nchw_shape(shape, layout):
    """An NCHW-ordered shape ((N,)C,H,W) in ``layout``."""
    shape = tuple(shape)
    if layout == "NHWC":
        return shape[:-3] + shape[-2:] + (shape[-3],)
    return shape


@njit(parallel=True, cache=True)
def transpose_blocks(src, src_off, dst, dst_off, count, rows, cols):
    """Transpose ``count`` consecutive (rows x cols) blocks into (cols x rows) blocks.

    Tiled so that a tile's reads and writes both stay in L1.  CHW -> HWC of one
    image is ``rows=C, cols=H*W``; HWC -> CHW is ``rows=H*W, cols=C``.
    """
    row_tiles = (rows + TRANSPOSE_TILE - 1) // TRANSPOSE_TILE
    col_tiles = (cols + TRANSPOSE_TILE - 1) // TRANSPOSE_TILE
    size = rows * cols
    for tile in prange(count * row_tiles * col_tiles):
        block = (tile // (row_tiles * col_tiles)) * size
        r0 = (tile // col_tiles) % row_tiles * TRANSPOSE_TILE
        c0 = tile % col_tiles * TRANSPOSE_TILE
        for c in range(c0, min(cols, c0 + TRANSPOSE_TILE)):
            for r in range(r0, min(rows, r0 + TRANSPOSE_TILE)):
                dst[dst_off + block + c * rows + r] = src[src_off + block + r * cols + c]
