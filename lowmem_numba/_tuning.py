"""Tuning constants, in one place, each with the measurement that set it.

Figures are from the 2-core AVX-512 machines this library is developed on
(numba 0.68, scipy 1.17's OpenBLAS 0.3.30), medians of repeated runs; the
machines are shared and noisy (about 5-10 %).  Change a value only with a
measurement beside it.
"""

# --------------------------------------------------------------- work splitting

#: At most this many tiles per thread: beyond 4, prange's contiguous shares
#: stop improving balance on the layer tables while every extra tile repacks
#: its GEMM operands.
SPLIT_MAX_TILES_PER_THREAD = 4

#: Price of one extra tile along the preferred / the other dimension, relative
#: to the imbalance it removes.  They only break ties between equally balanced
#: cuts; row (output-channel) cuts make thinner GEMMs, which OpenBLAS runs
#: 2-5 % slower per flop on the layer tables than column cuts of equal size.
SPLIT_COL_PRICE = 0.01
SPLIT_ROW_PRICE = 0.02

# ----------------------------------------------------------- GEMM tile minimums
# Smallest tile a family's split may create, per GEMM dimension: below these a
# single-threaded sgemm loses more efficiency than balance gains.

#: Output-channel (row) block of any GEMM split.
GEMM_MIN_ROWS = 16
#: Column tile of conv-1x1-gemm's and the calibration's GEMMs (256: tiles of
#: a 3136-pixel plane keep OpenBLAS at full speed at 2 threads).
GEMM_MIN_COLS = 256
#: Column tile of the patch-matrix GEMMs of im2col and im2row (128: their k =
#: C·kh·kw is long, so narrower tiles still amortise the packing).
PATCH_GEMM_MIN_COLS = 128
#: kn2row / kn2col partial-plane GEMMs: columns are cut only while each tile
#: keeps this many; below it, cutting rows is faster (measured on 6400x729x96
#: and 729x256x96: 20-30 % more GFLOP/s at 2 threads than column tiles).
KN2ROW_MIN_COLS = 1024
#: MEC's per-output-row GEMMs: smallest output-channel block and smallest tile
#: of lowered pixel rows (narrower GEMMs lose more in packing than balance gains).
MEC_MIN_CHANNELS = 32
MEC_MIN_PIXEL_ROWS = 64

# ------------------------------------------------------------- family tilings

#: kn2row-aa: output columns (of H*W) per band.  Wider bands make fewer, larger
#: GEMMs (1024-4096 measured best on VGG-16 and AlexNet layers); the save buffer
#: grows with the band's rows.
KN2ROW_AA_BAND_COLUMNS = 2048
#: kn2row shift-add tiles per thread: a few, so unequal tiles (border rows skip
#: taps) still balance under a static schedule.
KN2ROW_SHIFT_TILES_PER_THREAD = 4
#: kn2col: runs of channels shorter than this are added across groups with a stride.
KN2ROW_SHORT_RUN = 8
#: Micro-kernel algorithms: tiles swept per output-channel block before moving
#: to the next block: 16 tiles of 12 pixels read at most 192 pixels' input for
#: every weight block.  Measured 2, 4, 8, 16, 32, 64 and unblocked on VGG-16 /
#: ResNet-50 3x3 and 1x1 layers (one thread, batch 1): no value was better than
#: the noise of the shared machine (about 10 %); 16 is kept as a middle value.
UKERNEL_TILE_BLOCK = 16
#: Side of the square blocks layout transposes and weight repacking work in
#: (a 32x32 float32 tile's reads and writes both stay in L1).
TRANSPOSE_TILE = 32
