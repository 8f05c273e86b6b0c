"""Memory layouts: NCHW (channels first) and NHWC (channels last).

Shapes are converted here; images are transposed between CHW and HWC by a
tiled parallel kernel.
"""

from __future__ import annotations

from numba import prange

from ._compile import NONNEG, njit  # numba.njit whose cache=True never fails (see _compile)
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

    Tiled so that a tile's reads and writes both stay in L1: ``TRANSPOSE_TILE``
    squared elements, as a square or, when one side is shorter, as a strip as
    long as it takes (three channels of 341 pixels: 32x32 tiles made a
    3-channel 224x224 image 1568 tiles of 96 elements, 1.3 ns per element).
    CHW -> HWC of one image is ``rows=C, cols=H*W``; HWC -> CHW is
    ``rows=H*W, cols=C``.
    """
    area = TRANSPOSE_TILE * TRANSPOSE_TILE
    row_span = max(TRANSPOSE_TILE, area // max(1, cols))
    col_span = max(TRANSPOSE_TILE, area // max(1, rows))
    row_tiles = (rows + row_span - 1) // row_span
    col_tiles = (cols + col_span - 1) // col_span
    size = rows * cols
    for tile in prange(count * row_tiles * col_tiles):
        block = (tile // (row_tiles * col_tiles)) * size
        r0 = (tile // col_tiles) % row_tiles * row_span
        c0 = tile % col_tiles * col_span
        for c in range(c0, min(cols, c0 + col_span)):
            for r in range(r0, min(rows, r0 + row_span)):
                dst[(dst_off + block + c * rows + r) & NONNEG] = src[(src_off + block + r * cols + c) & NONNEG]
