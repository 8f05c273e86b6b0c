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
#: An item's tiles are cut into the nearest whole number of such blocks, of
#: equal size: cut 16 + 1, the 17 tiles of a 14x14 plane streamed all the
#: weights twice per image; one block of 17, 1x1 and 3x3 stride-2 layers on
#: 14x14 outputs ran 1.00-1.08x faster at batch 8 (one thread, best of 30
#: interleaved calls against the cut; medians 1.03-1.06).
UKERNEL_TILE_BLOCK = 16
#: Micro-kernel algorithms, 1x1 kernels: input channels a tile reduces over at
#: a time (equal blocks of whole vectors of at most about this many); the
#: partial sums add up in the output (``ACCUMULATE``).  Unblocked, a tile of
#: ResNet-50's layer4 1x1 2048 -> 512 (7x7) streamed its 128 KB weight panel
#: from L2 at every step.  AMD Zen 3, NCHW, best of 5 alternating in one
#: process: that layer unblocked / 1024 / 512 took 1.72 / 1.49 / 1.52 ms (b1,
#: one thread), 0.88 / 0.73 / 0.75 (b1, two), 12.6 / 11.3 / 11.5 (b8, one):
#: OpenBLAS's speed (conv-1x1-gemm 1.41, 0.74, 11.4).  1024-channel layers
#: (MobileNet pw13, layer4 1x1 out, downsample) within noise at 256-512 blocks
#: and 832 channels 0-4 % slower, so only longer reductions are blocked;
#: 3x3 kernels are not (VGG-16 conv5_1 within noise at 56-256-channel blocks,
#: layer4's 3x3 at batch 8 10-14 % slower: the channels-last walk folds its
#: tap and channel loops only unblocked).
UKERNEL_REDUCTION_BLOCK = 1024
#: Depthwise (NCHW): output elements per band of rows.  A band's input rows,
#: copied (top and bottom bands, stride 2) or read in place, and its column
#: masks stay in L1/L2 while every tap passes over them.  1024, 2048, 4096 and
#: 8192 measured on MobileNet's 112x112 ... 28x28 layers (one thread, batch 1
#: and 8): 2048 best or within noise everywhere; 4096 and up 5-25 % slower at
#: batch 8, 1024 3-10 % slower.
DEPTHWISE_BAND_OUTPUTS = 2048
#: Depthwise: fixed cost of one run (a vectorised loop over a band or a row,
#: with its setup and runtime overlap checks) and of one copy loop, as flops
#: at the calibrated vectorised rate (36 GFLOP/s here): about 40 ns and 4 ns.
#: Fitted to the time MobileNet's 7x7 and 14x14 layers took beyond their
#: arithmetic (NCHW, one thread, batch 1 and 8).
DEPTHWISE_RUN_FLOPS = 1500
DEPTHWISE_ROW_FLOPS = 150
#: depthwise-blocked: its arithmetic in flops at the calibrated rate of
#: vectorised loops, per flop computed.  The FMA kernel keeps the weights in
#: registers and loads each input column once, so it runs about three times
#: that rate: 0.37 from a least-squares fit of MobileNet-v1's nine depthwise
#: shapes (batch 8, one thread), the transposes priced as plain copies.
DEPTHWISE_BLOCKED_FLOP_COST = 0.37
#: depthwise-blocked: bytes of one thread's buffers (a band's input rows and
#: its output pixels, VL channels deep).  32, 64, 128, 256 KiB and whole
#: images measured on MobileNet-v1's dw1 ... dw7 (112x112 ... 14x14, batch
#: 8, one thread, two runs), the seven layers summed: 128 KiB 7.8-8.5 ms,
#: 256 KiB 8.0-8.7, whole images 8.6-9.3, 64 KiB 8.9-9.0, 32 KiB 11.2-13.2
#: (each band transposes its overlap rows again).
DEPTHWISE_BLOCKED_BUFFER_BYTES = 131072
#: Depthwise (NHWC): output elements (pixels x channels) per band of rows:
#: 128 KiB of output, whose input rows fit in one core's L2 (not swept; bands
#: mainly give the second thread work on batch 1).
DEPTHWISE_NHWC_BAND_ELEMENTS = 32768
#: Depthwise (NHWC): channels per block (each block's weights and input
#: columns pass over a whole output row).  Blocks of 64, 128 and 256 channels
#: ran MobileNet's depthwise layers 5-45 % slower than unblocked rows (one
#: thread, batch 1 and 8): a run's fixed cost per pixel pair outweighs the
#: L1 reuse.  4096 leaves every layer of the tables unblocked.
DEPTHWISE_NHWC_CHANNEL_BLOCK = 4096
#: Depthwise (NHWC): elements (pixels x channels) per row run when a layer has
#: few channels (a run repeats the weights for each of its pixels; layers with
#: more than half this many channels take pixel pairs).  512, 1024, 2048 and
#: 4096 measured on MobileNet's 32- to 256-channel layers (one thread): 512
#: best or within noise; larger runs' repeated weights spill out of L1.
DEPTHWISE_NHWC_RUN = 512
#: Patch-matrix builders: the fixed cost of one copy run (a loop over one row
#: of the patch matrix), in plain-copy elements.  Measured per builder and
#: layer on one thread (im2col copy-short, copy-self: 10-29 ns per run beyond
#: its elements at the copy rate, median 16 ns, about 93 copies; e.g. ResNet-50
#: layer4's stride-2 3x3 builds 32 K runs of 7 pixels in 0.9 ms, which priced
#: as its 226 K elements alone was 0.04 ms, and "auto" chose im2col at 3.6 ms
#: over the micro-kernel at 2.3).
PATCH_RUN_COST = 100
#: im2col-scan's bounds-checked gather, in plain-copy elements per patch
#: element besides its runs: 1.25-2.9 ns per element measured (7-17 copies)
#: on the same layers.
SCAN_ELEMENT_COST = 6
#: Price of one element of a layout conversion (NCHW <-> NHWC, per image,
#: ``transpose_blocks``) in plain-copy elements: 0.42-0.58 ns per element on
#: one thread against 0.17 for a copy (the calibrated rate), 2.4-3.4 copies;
#: also the price of the kn2row families' packings, which are
#: ``transpose_blocks`` too (medians 1.3-2.7, results/pack_speed.md).
#: Priced as a copy, "auto" sent an NCHW call of MobileNet's dw12 to
#: depthwise-nhwc with two conversions, 1.8x slower than the NCHW kernel.
TRANSPOSE_COST = 3
#: Price of one packed element of a per-call weight packing, in plain-copy
#: elements, for the families that state no ``pack_cost`` of their own: the
#: element-by-element packings of im2row, MEC and kn2row-aa's transposed
#: forms take 6-10.7 copies (medians in results/pack_speed.md); priced as
#: copies, functional calls went to algorithms whose packing the model
#: undercounted 5x.
PACK_COST = 7
#: Per-call weight packing of the micro-kernel families, in plain-copy
#: elements per packed element: register transposes (``pack_lanes``), median
#: 1.38 over the 92 weight shapes of the layer tables, 0.8-1.7 for all but the
#: smallest (``python perf/pack_speed.py``, one thread; results/pack_speed.md
#: has a later run at 1.09, in a faster phase of the machine: kept, since that
#: times the pass alone, not the kernel then reading the packed copy back).
#: direct-pixels' packing (8 channels per step, a gather), before it read the
#: weights as given, measured the same: median 1.28 over the same shapes.
UKERNEL_PACK_COST = 1.4
#: The same packing done inside the kernel (a batch-1 or stacked call packs
#: each block of output channels into scratch right before its tiles), in plain-copy
#: elements per packed element: the packed copy is neither written to memory
#: nor read back.  A functional call's time minus a prepacked layer's, one
#: thread (``python perf/pack_speed.py``): median 1.04 over the 92 weight
#: shapes of the tables, 0.62-1.9 for 80 % of them (more only for RGB layers'
#: and 1x1 reductions' few weights, where a call's fixed cost shows); three
#: later runs 0.73, 0.70 and 0.67: priced at 0.7, about the median of the four
#: (a difference of two noisy times: runs an hour apart move it by 1.5x).
UKERNEL_PACK_IN_KERNEL_COST = 0.7
#: Packing inside the kernel sweeps all of an item's tiles once per weight
#: block (each block is packed once), so the input rows the tiles read pass
#: through the core's caches once per block: not on 1x1 layers walked image
#: by image where those rows take more than this share of L2 and a block of
#: UKERNEL_TILE_BLOCK tiles would not (the weights are then packed before
#: the kernel, whose tile blocks keep their input in cache).  Functional
#: calls, in-kernel against before-kernel packing (Intel Xeon kind, 2 MiB L2,
#: best of 5 alternating): on one thread at batch 1, 1.35x slower on ResNet-50's
#: layer2 downsample (1.6 MB of rows read), 1.06-1.12x on its 56x56 and
#: 28x28 1x1 layers of 256-512 channels and MobileNet's pw1 and pw3 (1.6-3.2
#: MB; on two threads 0.96-1.16x), 0.90-0.95x (faster) on 1x1 layers reading
#: 0.8 MB or less.  Not on larger kernels, which do kh x kw taps of work per
#: row read (VGG-16's 3x3 layers at batch 1, 3.2-12.8 MB: in-kernel
#: 0.89-1.04x the time), nor on stacked walks, whose short calls gain most
#: from skipping the packing pass (GoogLeNet's 5a/5b 1x1 layers, ResNet-50's
#: layer4 downsample and MobileNet's pw13 at batch 8: 0.91-1.04x).
UKERNEL_PACK_SWEEP_L2_SHARE = 0.5
#: A half-width channel block of direct-ukernel (at most ``VL`` channels: the
#: last block of M/g = 16, 48, 112, 144...) runs on ``MR x 1``-vector tiles,
#: one broadcast per FMA: its channels cost this many times a full block's
#: (``MR x NV`` vectors).  1x1 layers through Conv2d, one thread, batch 1,
#: medians of 150 interleaved calls, M = 16 to 96: a further half block took
#: 1.36 / 1.37 / 1.42x a full block's time per channel on 512 channels of
#: 14x14, 256 of 28x28 and 832 of 7x7 (Intel Xeon kind).  Priced as
#: channels of a full block, the model had put GoogLeNet's 480->16 on 14x14
#: under 1 MiB on direct-ukernel (31.0 us) rather than direct-pixels (25.8).
UKERNEL_HALF_BLOCK_COST = 1.37
#: Time per channel of direct-ukernel's wide unit (a full block and the half
#: block after it as one, on ``WIDE_MR``-row tiles of ``NR + VL`` channels),
#: relative to a full block's.  Against a full and a half block (priced
#: 32 + 16 x 1.37 channels) the wide unit ran GoogLeNet's layers with 48, 112,
#: 144 and 208 output channels 1.03-1.19x faster (``perf/interleaved_ab.py``,
#: medians, batch 1 and 8, one thread, Intel Xeon kind): 0.94-1.04 times a
#: full block's time per channel.
UKERNEL_WIDE_UNIT_COST = 1.0
#: direct-ukernel reading a strided NCHW 1x1 layer in place (ResNet-50's
#: downsampling shortcuts where their outputs do not stack): its tiles'
#: pixels cost this many times a stride-1 layer's, beyond the planar lines
#: the plan counts.  Every step of a 12-pixel tile reads 2-3 lines of which
#: it uses every other float, and no tile shares them with the next; the
#: model without it predicted direct-ukernel / direct-pixels at 0.97-1.07
#: (batch 1) and 1.02 (batch 8) on layer3's and layer4's downsample, where
#: they ran 1.08-1.16 and 1.20-1.21 (Intel Xeon kind, one and two threads,
#: medians of 11 interleaved calls), and "auto" kept direct-ukernel on them.
#: Layers of a 3x3 kernel, whose kernel row reuses a step's lines, are priced
#: within 0.99-1.15 of their times without it, as direct-pixels is.
UKERNEL_STRIDED_1X1_COST = 1.15
#: The NCHW micro-kernel's tile store (a register transpose of every tile and
#: ``NR`` short stores), in plain-copy elements per output element: the model
#: without it predicted MobileNet's conv1 / pw1 / pw2 and ResNet's conv1 0.5-0.9
#: copies per output too fast (0.367 / 0.578 / 0.532 / 2.46 ms predicted,
#: 0.442 / 0.70 / 0.574 / 2.58 measured, batch 1, one thread), and put them on
#: it rather than on direct-pixels, which stores pixel vectors as they lie.
UKERNEL_NCHW_STORE_COST = 0.6
#: The micro-kernel's general tile store (the tile spilled to the stack and
#: stored value by value), in plain-copy elements per output it stores: edge
#: tiles short of their kernel's rows or channels, and in NCHW tiles whose
#: pixels are not consecutive in the output (spanning two rows of a
#: rectangle, or two images of a stacked walk: the transposed vector store
#: needs consecutive pixels).  Without it and UKERNEL_STACK_SEGMENT_COST the
#: model priced GoogLeNet's 14x14 and 7x7 5x5 and 3x3 layers up to 1.4x too
#: fast (stacked at batch 4 and 8, and 14x14 5x5 at batch 1 and 2), against
#: 0.97-1.07x for AlexNet's conv3, GoogLeNet's 4a/4e 3x3 and 3a 5x5 and
#: ResNet-50's layer3 3x3, whose tiles are mostly whole rows, and kept
#: direct-ukernel on 4e's 5x5 where Winograd F(2x2,5x5) ran 1.2-1.3x faster
#: (Intel Xeon kind, one thread, functional calls).  Fitted with
#: UKERNEL_STACK_SEGMENT_COST by ``python perf/ukernel_model_fit.py`` (least
#: squares of the relative error on 15 layers at batch 1, 2, 4 and 8, the
#: rest of the prediction scaled by the machine's phase, 1.01-1.09 in three
#: runs): 4.5 and 0.84 (first two runs, which counted full-width rectangles'
#: tiles as spanning rows: 5.7 / 5.6 and 1.08 / 0.85); every call then within
#: 0.81-1.14x of the fit (0.83-1.39x without the two terms), 50 of 60 within
#: 0.9-1.1x.  The 12 picks that changed on the five tables (batch 1 and 8, one
#: and two threads, functional and under a 1 MiB limit, all to Winograd) ran
#: 1.02-1.52x faster than the old ones (GoogLeNet's 4e 5x5 at batch 8, one
#: thread: 1.71 -> 1.32 ms).
UKERNEL_GENERAL_STORE_COST = 4.5
#: Stacked NCHW walks (ukernel._stacks) read in place: a tile spanning images
#: reads each image's part of every input plane as a stream of its own (on
#: other pages), in plain-copy elements per further image per tile, channel
#: block, input channel and kernel row.  Fitted with UKERNEL_GENERAL_STORE_COST.
UKERNEL_STACK_SEGMENT_COST = 0.85
#: A line an NCHW tile's step reads costs more the larger the planes it
#: steps between (``KernelPlan.planar_plane_pages``: an input plane in pages,
#: at most this; priced at the calibrated ``planar_line_page_seconds`` per
#: line and page).  On the Intel kind, direct-ukernel's 256 -> 256 1x1 layer
#: (prepacked, batch 1, one thread, best of 3 x 4 interleaved) took 0.02,
#: 0.04-0.09, 0.29, 0.22 and 0.46 ns per line beyond the rest of its
#: prediction on 14x14, 28x28, 40x40, 56x56 and 64x64 planes (0.19-4 pages):
#: 0.07-0.19 ns per line and page; on 14x14 planes of 512-1024 channels as
#: little as on 256 (the channels' lines a tile reads are as many; the whole
#: input in L2 capacities, 0.2-0.4 there, priced those at 0.1 ns a line and
#: moved MobileNet's pw7-pw11 at batch 8 to direct-pixels, 0.94x as fast).
#: Larger planes were not measured: capped here.
UKERNEL_PLANAR_PAGES_MAX = 4.0
#: Outputs of at least this many bytes, of a kernel whose stores line up
#: with its loads when the output lies as far from a cache line as the input
#: (KernelPlan.output_follows_input), are allocated so.  Measured on the
#: Intel Xeon kind, direct-pixels, one thread, conv2d into an output at the
#: input's offset and at 32 bytes from it, medians of 20-600 interleaved
#: calls: 1x1 layers on 112x112, 56x56 and 28x28 planes 1.01-1.07x faster at
#: batch 1 (MobileNet's pw1 1.07x, ResNet-50's 128->512 1.04x) and up to
#: 1.13x at batch 8 (pw1), 64->64 on 56x56 1.03x / 1.01x; such an allocation
#: costs about 1 us more than np.empty, as much as the 1 % it saves on a
#: 200 KiB output (GoogLeNet's 192->64 on 28x28): not done below this.
ALIGNED_OUTPUT_MIN_BYTES = 256 * 1024
#: direct-pixels sweeps runs of tiles whose input (at most this many bytes:
#: 48 pixels x C/g x kh x kw floats each) stays in cache while every channel
#: block passes over them, so the outputs go to one block's planes at a time.
PIXELS_RUN_BYTES = 196608
#: Input bytes ahead (whole channels, at least one) that direct-pixels'
#: panel copy hints into L2 while it copies a run of tiles channel by
#: channel.  At batch 8 the input comes from beyond L2, and each channel's run
#: (768 bytes of a 56x56 plane for 256 channels) lies on its own pages, which
#: the hardware prefetchers do not follow.  Intel Xeon kind, one thread, 1x1
#: on 56x56 at batch 8 from a 16-byte-aligned input, best of 11 interleaved
#: with torch (116-141 GFLOP/s): 256->64 ran at 67 GFLOP/s without, 96-105 two
#: channels ahead, 98-106 eight, 98 sixteen, 85 thirty-two; 256->128 at 93,
#: 117-123, 119-126, 119-122, 113-125.  In bytes, so that short runs of many
#: channels and long runs of few are hinted alike: one channel ahead instead,
#: ResNet's 256->64 at batch 8 took 7.5 ms against 7.2, 256->128 14.2 against
#: 13.0, and batch 1 is within noise (best of three alternating processes).
PIXELS_PACK_PREFETCH_BYTES = 6144
#: direct-pixels' plain sweep of a 1x1 layer read in place: the first channel
#: block of each run of tiles hints the next tile's input into L2 as it goes
#: (``next_prefetching_pixel_tiles``) where an image's input exceeds this
#: share of L2 and so comes from L3 or memory.  Against not hinting
#: (``perf/interleaved_ab.py``, medians, Intel Xeon kind, 2 MiB L2): images of
#: 3.2 MB (ResNet-50's 256->64 and 256->128 on 56x56) 1.10-1.18x faster at
#: batch 8 on one thread, 1.03-1.07x on two, 1.01-1.04x at batch 1; of 1.6 MB
#: (128->128 on 56x56, 512->128 on 28x28) 1.00-1.03x; of 0.4-0.8 MB
#: 0.95-0.97x at batch 8 (GoogLeNet's 480->16, 512->24, 528->32 on 14x14)
#: to 1.05x (64->64 on 56x56).
PIXELS_PREFETCH_NEXT_L2_SHARE = 0.5
#: Largest input (all its images) that direct-pixels' 1x1 stride-1 layers
#: read in place rather than through packed panels (with planes of whole
#: vectors; see the module docstring).  Read in place, the tiles rely on
#: their own prefetch a few steps ahead, which covers cache latency but not
#: memory's; the panel copy hints whole runs into L2 (PIXELS_PACK_PREFETCH_BYTES).
#: Intel Xeon kind, 16-byte-aligned inputs, best of three alternating
#: processes: in place against panels, batch 1, one thread, ResNet-50's and
#: MobileNet's 1x1 layers on 56x56 and 28x28 ran 1.06-1.20x faster
#: (GoogLeNet's 256->32 on 28x28 1.50x); at batch 8, one thread, 6.4-12.8 MB
#: inputs 1.03-1.36x faster, while ResNet's 256->128 on 56x56 (25.7 MB) ran
#: 16.3 ms against 13.5 (256->64: 7.3 against 7.4).  Measured again once
#: the tiles that read in place had a sweep of their own (824f864) and ran
#: without copies on whole-vector planes (PIXELS_COPY_MIN_CHANNELS), batch 8,
#: in place up to 64 MiB against 16, interleaved, medians (ms): 256->64 on
#: 56x56 (25.7 MB) 8.0 / 8.5 on one thread and 3.5 / 4.3 and 3.5 / 4.2 on two,
#: 256->128 15.8 / 15.2 on one, 6.8 / 6.9 and 7.0 / 7.0 on two; hence 32 MiB.
PIXELS_IN_PLACE_BYTES = 32 * 2**20
#: direct-pixels' 1x1 stride-1 layers whose planes are a multiple of this
#: many bytes (16x16, 32x32, 64x64) copy their input into packed panels
#: rather than read it in place: stepping from plane to plane, the tile's
#: loads of every channel then fall in at most 4 of L1's 64 sets (4 KiB
#: apart map to one set on the Intel and AMD kinds alike), and the reduction
#: evicts its own lines.  AMD Zen 3 kind, one thread, batch 1, in place
#: against panels (GFLOP/s): 16->256 on 32x32 24 / 52, 64->256 30 / 75,
#: 64->64 27 / 54, 128->128 on 16x16 45 / 61, 256->256 56 / 78, 64->128 on
#: 64x64 32 / 72; 64->128 on 56x56 (12.25 KiB planes) ran 71 in place.
PIXELS_ALIASED_PLANE_BYTES = 1024
#: ... only where L1 has at most this many ways: the Intel kind's 12-way L1
#: holds the aliasing lines, and in place ran 0.96-1.25x as fast as panels
#: (one thread; 1.03-1.19x on two) on 16->256, 64->256, 64->64 and 256->256
#: on 32x32, 128->128 on 16x16 (batch 1 and 8), 64->128 on 64x64, 32->64 on
#: 80x80 and 112x112 (MobileNet's pw1: 1.13-1.15x at batch 1, 1.25x at
#: batch 8) and 64->64 on 112x112 (best of three alternating processes).
PIXELS_ALIASED_MAX_WAYS = 8
#: Output channels per group from which direct-pixels' 1x1 stride-1 layers
#: whose planes are not whole vectors (14x14, 7x7) copy their input into
#: packed panels rather than read it in place, where most vector loads
#: straddle two cache lines: the copy pays off only over many channel blocks.
#: Intel Xeon kind, batch 1, one thread, 16-byte-aligned inputs, best of three
#: alternating processes, in place against panels: GoogLeNet's 480->16, ->64,
#: ->192 on 14x14 in 0.040 / 0.096 / 0.258 ms against 0.076 / 0.133 / 0.295,
#: 832->32 on 7x7 0.041 against 0.057, ResNet's 1024->256 on 14x14 0.77
#: against 0.81; MobileNet's 512->512 on 14x14 0.76 against 0.74 and
#: 1024->1024 on 7x7 1.03 against 0.93.
PIXELS_PACK_MIN_CHANNELS = 512
#: Largest output plane (pixels) on which direct-pixels' 1x1 layers on one
#: slot run the kernel's serial twin, outside any parallel region, also when
#: their tiles copy, pack or gather their input (those in the plain sweep
#: always do).  Intel Xeon kind, one thread, batch 1, medians of
#: ``perf/interleaved_ab.py``, the twin against the prange: every GoogLeNet
#: 1x1 layer on 14x14 and 7x7 planes 1.03-1.23x faster (480->16 1.21x,
#: 1024->256 1.03x), ResNet-50's downsample to 7x7 1.02x; on 28x28 planes
#: 256->32 and 256->64 1.08x and 1.01x but 256->128 0.97-0.98x, 512->128
#: 0.96-1.00x and layer2's downsample (gathered) 0.955x; on 56x56, 256->64
#: and 256->128 0.955x and 0.92x (0.95x at batch 8).  In the plain sweep:
#: 192->16, ->32 and ->96 on 28x28 1.06-1.15x, 64->64, 128->128 and 64->256
#: on 56x56 1.04-1.09x, 32->64 on 112x112 1.06x.
PIXELS_SERIAL_MAX_PLANE = 14 * 14
#: ... and there only up to this many multiply-adds (batch x plane x input
#: channels per group x output channels): the twin saves a fixed cost, and
#: its tiles that copy run a few percent slower.  At batch 8 (same
#: measurement): 832->48 on 7x7 (16 M) 1.07x faster in the twin, 512->128,
#: 480->192 and 528->256 on 14x14 (103-212 M) 0.97-0.99x, 832->384 on 7x7
#: (125 M) 1.00x, ResNet-50's 256->1024 on 14x14 (411 M) 0.90x; at batch 1,
#: 1024->256 on 14x14 (51 M) 1.03x.
PIXELS_SERIAL_MAX_MACS = 64 * 2**20
#: direct-pixels' 1x1 stride-1 layers read in place: with at least this many
#: input channels per group and an input (all its images) of at most
#: PIXELS_COPY_MAX_BYTES, the first channel block of each run of tiles copies
#: every input vector it loads into the slot's panel (three more stores per
#: 24 FMAs), and the item's other channel blocks read the run there, one
#: contiguous stream, instead of a plane (a new page on 56x56) per step.
#: Intel Xeon kind, functional calls, best of four alternating processes
#: against the code before (us), batch 1, one thread: ResNet-50's 256->64 on
#: 56x56 559 / 576 (medians 563 / 591), 256->128 on 56x56 1028 / 1056 (1031 /
#: 1086), 512->256 on 28x28 996 / 998, GoogLeNet's 480->192 on 14x14 185 /
#: 191; two threads, best of three, twice: 327 / 360 and 316 / 328, 552 /
#: 619 and 542 / 562, 498 / 544 and 488 / 482, 113 / 117.  MobileNet's
#: 128->128 on 56x56 gained 1.02x on one thread and lost 0.95x on two, and
#: on 64 and 32 channels the copy cost more than it saved
#: (64->64 on 56x56 168 / 156, pw1 407-449 / 397-408), hence 256.  At batch
#: 8 (12.8 MB inputs) the extra stores slowed the memory-bound 512->256 on
#: 28x28 and 128->128 on 56x56 by 1.04-1.12x, hence the size bound
#: (GoogLeNet's 480->192 on 14x14 at batch 8, 3 MB: 1698 / 1793).
PIXELS_COPY_MIN_REDUCTION = 256
PIXELS_COPY_MAX_BYTES = 4 * 2**20
#: ... and only on planes that are not whole vectors (14x14, 7x7: most loads
#: in place straddle two cache lines) with at least this many output
#: channels per group.  Measured again once the tiles that read in place
#: without copies had a sweep of their own (824f864): the same call planned
#: with and without copies, interleaved, medians, batch 1, Intel Xeon kind,
#: in place against copies: on whole-vector planes, one thread, 256->32,
#: ->64 and ->128 on 28x28 0.80 / 0.87 / 0.92, 512->128 and 512->256 on
#: 28x28 0.95 / 0.99, ResNet-50's 256->64 and 256->128 on 56x56 0.91 /
#: 0.96; two threads 0.96 / 0.99 / -, 1.01 / -, 0.92 / 0.96.  On 14x14 and
#: 7x7 planes, one thread: 480->16 and 512->24 0.90 / 0.93, 480->64 and
#: 480->96 0.98 / 0.99, 512->128 and ->160 0.99 / 1.00, 832->48, ->128 and
#: ->384 1.00 / 1.03 / 1.03, 1024->256 1.02; two threads: 480->16 0.97,
#: 832->48 1.02, 480->64 1.03, 480->96 and ->192 1.04 / 1.07, 512->128 and
#: ->160 1.06, 832->128 and ->384 1.03 / 1.06, 1024->256 1.06.
PIXELS_COPY_MIN_CHANNELS = 48
#: direct-pixels' gather of a strided 1x1 layer's input into its panels, in
#: plain-copy elements per gathered element (each channel's run of a tile
#: is a strided read from a new plane).  On the Intel kind, one thread,
#: ResNet-50's layer2 downsample (256->512, 56x56 -> 28x28) ran 0.21 ms over
#: the prediction with gathers priced as copies, about 1 ns per gathered
#: element (3.7 copies); at batch 8, 4 ns.  Priced as copies, two threads
#: (each gathering the whole input for its half of the channel blocks) ran
#: layer3's downsample in 1.28 ms, direct-ukernel in 0.85.
PIXELS_GATHER_COST = 4
#: What direct-pixels' tiles of 0 to 3 vectors cost, in vectors of a full
#: (3-vector) tile's time, by the tile's channels (PIXEL_CHANNELS): a row's
#: last tile is as wide as the row's rest, and the narrower ones do less work
#: per load and per tile, with fewer independent FMA chains.  Intel Xeon kind
#: (8 channels), one thread, batch 1, 3x3 96->208 and 5x5 32->128 on 14 rows
#: of 16, 32, 48, 64 and 96 pixels: per vector of a row 45.2 / 29.5 / 27.9 /
#: 32.0 / 28.1 us and 24.0 / 16.5 / 15.3 / 17.1 / 15.4 us.  Priced as whole
#: vectors at the full tile's rate, GoogLeNet's 14x14 3x3 and 5x5 layers (one
#: vector per row) ran 1.5-1.6x slower than predicted, and "auto" put them
#: on direct-pixels, which the channel-lane tile beat by 1.2-1.5x.  AMD Zen 3
#: kind (4 channels: a 1-vector tile has 4 chains, as many as one FMA's
#: latency in cycles), the same layers on rows of 1, 2, 3, 6 and 12 vectors
#: (8 to 96 pixels): 71.8 / 45.1 / 36.9 / 37.0 / 37.0 us and 39.8 / 24.3 /
#: 20.0 / 19.7 / 20.0 us (two more runs within 0.15 of these costs).
PIXELS_TILE_VECTORS = {8: (0.0, 1.6, 2.1, 3.0), 4: (0.0, 1.95, 2.4, 3.0)}
#: direct-ukernel (NCHW) on layers with at most this many input channels
#: (one group, dilation 1) reads a channels-last copy of each image, so that
#: its tap and channel loops fold into one run per row of taps.  On the
#: 3-channel first layers, folded against not, one thread / two (three
#: alternating processes each, best): GoogLeNet/ResNet conv1 2.5-2.7 / 1.4-1.6
#: ms against 2.7-3.5 / 2.1-2.2, AlexNet conv1 2.0-2.1 / 1.07 against 2.2-2.8
#: / 1.7-1.8, VGG-16 conv1_1 3.9 / 2.1 against 4.1-4.6 / 2.5-3.0, MobileNet
#: conv1 even.  With 16-48 channels (GoogLeNet's 5x5 layers) it gained
#: nothing and the copy cost up to 10 %.
UKERNEL_FOLD_CHANNELS = 4
#: direct-ukernel copies each image zero-padded first (now its rows only: see
#: ukernel._staging) when its output plane
#: has at most UKERNEL_PAD_PIXELS outputs and those whose taps all fall inside
#: the input are at most UKERNEL_PAD_INTERIOR of them: border outputs
#: otherwise run as short runs and single pixels.  Padded against not (two
#: alternating processes each): at batch 1, one thread, 7x7 images ran
#: 1.12-1.20x faster (ResNet-50 layer4 3x3, interior 51 %; GoogLeNet 5a/5b
#: 5x5, 18 %, and 5b 3x3); GoogLeNet's 14x14 5x5 layers (51 %) even at batch
#: 1 and 10-20 % slower at batch 8 on two threads (a padded call then ran an
#: image at a time, and one 14x14 image splits worse than the batch); 73 %
#: interiors (28x28 5x5, 14x14 3x3) 0.96x.  At larger batches the images are
#: stacked instead (UKERNEL_STACK_PIXELS).
UKERNEL_PAD_INTERIOR = 0.6
UKERNEL_PAD_PIXELS = 64
#: Micro-kernel algorithms: at batch > 1, planes of at most this many outputs
#: may be walked with the images stacked into each row of a rectangle (see
#: ukernel._stacks), where the border is a large share of the plane.  Stacked
#: against not (prepacked direct-ukernel, batch 8, two alternating runs):
#: GoogLeNet's 7x7 5x5 layers 0.78-0.79 -> 0.55 ms on one thread and
#: 0.40-0.44 -> 0.29 on two (5a; 5b alike), its 14x14 5x5 layers 3.07 ->
#: 2.58 and 1.51-1.64 -> 1.30, ResNet-50's layer4 3x3 stride 2 (7x7
#: outputs) 20.0-20.7 -> 17.6-18.2; on 28x28 planes within 2 % either way.
UKERNEL_STACK_PIXELS = 196
#: ... and only where the stacked walk, its runs rounded as the kernel tiles
#: them and weighted by their share of the taps, is priced below this share
#: of the per-image walk priced alike: short tiles cost more than their
#: pixels (each streams the whole weight block).  Measured stacked over
#: per-image at batch 8, one thread, against priced: ResNet-50 layer4 3x3
#: stride 2 0.94 against 0.92, layer3 3x3 (14x14) 1.04 against 0.97.
#: ``python perf/stack_speed.py`` (results/stack_speed.md) times every layer
#: of the tables the rule considers: stacked, the 5x5 layers run at 0.73-0.91
#: of the per-image walk, ResNet-50's layer4 stride 2 at 0.83-0.93; but since
#: the small-image copy pads the rows only, 7x7 3x3 layers (priced 0.86) gain
#: nothing (0.94-1.19), a loss the margin cannot tell from those gains.
#: AlexNet's 13x13 3x3 layers (priced 0.933) gained nothing either, on an AMD
#: EPYC (0.99-1.03) and on an Intel Xeon (0.89-1.12: 1.06 / 0.98 / 1.12 on
#: one thread), where layer4 stride 2 (priced 0.917) ran at 0.95-0.99 and
#: the 5x5 layers at 0.80-0.96: 0.925 keeps those and leaves AlexNet.
UKERNEL_STACK_MARGIN = 0.925
#: direct-ukernel: NCHW images stacked (see UKERNEL_STACK_PIXELS) under a
#: kernel of several taps, with at least this many input channels per group,
#: are copied channels-last, the whole batch at once (ukernel._staging).
#: Read in place, each step of a stacked tile broadcasts pixels of two or
#: three images from the next channel's planes: over 512 channels a tap's
#: channel loop reads more lines than L1 holds, and every tap reads them
#: again; channels-last, a line serves 16 steps.  Intel Xeon, copied over in
#: place, best of interleaved runs: ResNet-50's layer4 3x3 stride 2 at batch
#: 8 1.29-1.34x faster on one thread and 1.16 on two, 1.13x at batch 4; its
#: layer4 3x3 1.16x (functional calls, old code against new, two alternating
#: processes: 1.29-1.35x on one thread at batch 4 and 8, 1.15-1.18x on two);
#: GoogLeNet's 5b 3x3 (192 channels) 1.04x, its 5x5 layers (16-48 channels)
#: 0.88-1.01x.
UKERNEL_STACK_COPY_CHANNELS = 256
#: direct-ukernel: float32 elements of the images staged (copied, then run) at
#: once, a quarter of a 1 MiB L2; at least one image.  GoogLeNet's 7x7 5x5
#: layers hold 5.8-11 images in it: zero-padded, 8 at a time against one
#: (prepacked, batch 8, three alternating runs), 5a took 0.78 against 0.82 ms
#: on one thread and 0.40-0.42 against 0.47-0.62 on two (two launches fewer
#: per image); they are stacked at batch 8 now, padded at batch 2.
UKERNEL_STAGE_ELEMENTS = 64 * 2**10
#: Winograd's per-call weight transform ``G w G^T`` (transposes, then the
#: transform in registers), in plain-copy elements per transformed element,
#: by variant: medians 2.01, 2.02 and 3.24 over the layer tables' 3x3 and 5x5
#: weights (same script).  The 5x5 transform has 6.7 multiply-adds per
#: transformed element, the 3x3 ones 3.5.  When the transform ran in float64
#: loops over memory, it cost 6-11 copies per element.  Those medians were
#: measured with the transform points a multiple of 4 KiB apart on most
#: layers (winograd.point_stride); padded, on a 2-core Intel Xeon (where the
#: aliased layout measured 1.31-1.50, 1.35-1.40 and 1.81-1.90), two runs gave
#: 0.91 / 0.89, 0.78 / 0.80 and 1.45 / 1.48.
WINOGRAD_PACK_COST = {"winograd-2x2-3x3": 0.9, "winograd-4x4-3x3": 0.8, "winograd-2x2-5x5": 1.5}
#: Side of the square blocks layout transposes and weight repacking work in
#: (a 32x32 float32 tile's reads and writes both stay in L1).
TRANSPOSE_TILE = 32
#: Winograd: share of one core's L2 that one thread's transformed input tiles
#: and products (``V`` and ``Z``) may fill; the rest holds the panel of
#: transformed weights being multiplied and the output tile.
WINOGRAD_SLOT_CACHE_FRACTION = 0.5
#: Winograd: input channels of a tile staged and transformed at once.  Bounds
#: the staging buffers (2 a^2 x this) so that VGG-16's 512-channel layers stay
#: under 2 MiB of scratch at two threads; 64 channels are four AVX-512 vectors
#: per transform row, enough that the loops run at full width.
WINOGRAD_STAGE_CHANNELS = 64
#: Winograd: input channels per block of the element-wise products' reduction,
#: the micro-kernel adding each block's sums into Z.  Error grows with the
#: length of a float32 sum, and OpenBLAS sums in K blocks too: F(2x2,3x3)'s
#: worst mean error over the layer tables was 6.4x im2col's unblocked, 3.5x
#: in blocks of 256, 1.7x of 128, 1.3x of 64 (perf/winograd_accuracy.py).
#: Each block stores and reloads the register tile: against unblocked, 128
#: cost 2 % on VGG-16 conv3_2 and 8-10 % on 512-channel layers (F(4x4,3x3),
#: one thread), 64 twice that.  128 keeps F(2x2,3x3) within the 2x bound.
WINOGRAD_REDUCTION_BLOCK = 128
#: Winograd: fixed cost of one transform point of one tile (the loops and
#: calls the input transform, the products and the output transform spend
#: on it whatever the channel count), and the cost of one transformed weight
#: read by one tile block (each block streams its channel chunk's weights,
#: a^2 M C/g floats: from the L3 cache, or from memory when they exceed it,
#: as the 38 MB of F(4x4,3x3) on 512 -> 512 channels do here), all in
#: plain-copy elements.  First fitted together (non-negative least squares
#: of the relative error) to the time the plan left unexplained on 50 layers
#: x variants x batch 1 and 8, one thread (the 3x3 and 5x5 stride-1 layers
#: of AlexNet, VGG-16 to 56x56, GoogLeNet and ResNet-50): 114, 0.195 and
#: 0.81 (kept as 114, 0.2 and 0.8).
#: Since the input transform runs in registers (a vector of channels at a
#: time), the transforms cost less than their elements moved as plain
#: copies, and by how much depends on the variant: WINOGRAD_TRANSFORM_COST
#: scales the transforms' elements (2 per transformed input element, 1 per
#: product read and output written), and the point cost is per variant.
#: Both refitted per variant (grid search of the RMS log error) on the same
#: layers, batch 1 and 8, one thread, Intel Xeon kind, under one
#: calibration: measured / predicted went from median 0.93 / 1.06 /
#: 0.66 (RMS log error 0.121 / 0.132 / 0.412) to 1.01 / 1.02 / 0.96 (0.085 /
#: 0.110 / 0.144) for F(2x2,3x3) / F(4x4,3x3) / F(2x2,5x5).  F(2x2,5x5) had
#: been priced 1.5x too slow: on GoogLeNet's inception3b 5x5 at batch 8 it
#: ran 4.34-4.68 ms against direct-ukernel's 5.16-5.19, predicted 7.0 against
#: 5.5, and "auto" kept direct-ukernel.  On 13x13 and 14x14 images the 3x3
#: variants now often tie on price, and F(2x2,3x3) (smaller rounding errors)
#: is picked: measured 0.87-1.03x F(4x4,3x3)'s time on one thread, 0.95-1.11x
#: on two (AlexNet conv3-5, GoogLeNet 4a-4e, ResNet-50 layer3, VGG-16 conv5).
WINOGRAD_TILE_POINT_COST = {"winograd-2x2-3x3": 170, "winograd-4x4-3x3": 165, "winograd-2x2-5x5": 60}
WINOGRAD_TRANSFORM_COST = {"winograd-2x2-3x3": 0.5, "winograd-4x4-3x3": 1.2, "winograd-2x2-5x5": 0.4}
#: Winograd: the transforms above run in cache as vector arithmetic, priced
#: at the calibrated rate of the families' own vector loops (vector_rate):
#: their costs, fitted in copied elements on the Intel Xeon kind, convert at
#: that kind's calibrated ratio vector_rate / copy_rate = 3.6e10 / 5.0e9.
#: Priced at the copy rate, which on the AMD Zen 3 kind is memory's (a 32 MiB
#: copy does not stay in its L3, shared with other tenants: 1.5-2.4e9
#: elements/s against 5-6e9 on the Xeon), the transforms cost 2-5x their time
#: there and "auto" kept F(2x2,5x5) off GoogLeNet's 5x5 layers (measured
#: 1.16-1.34x faster than the direct-ukernel it picked at batch 1 and 8).
WINOGRAD_TRANSFORM_FLOPS_PER_ELEMENT = 7.2
WINOGRAD_WEIGHT_READ_COST = 0.2
WINOGRAD_WEIGHT_MEMORY_READ_COST = 0.8
#: Winograd weight transform: input channels staged (transposed to lanes) at
#: once per block of NR output channels: whole 16x16 register transposes, and
#: a slot's staging of r^2 x (this + 1) x NR floats stays in L1 for 3x3
#: kernels (19.6 KiB).
WINOGRAD_PACK_CHANNELS = 16
#: Winograd, functional calls: the kernel transforms the weights itself (one
#: block of output channels at a time, into scratch that stays in cache) when
#: the batch has at most this many tiles, which one tile block then holds
#: (winograd.tile_block holds them in one block for prepacked weights too,
#: when those exceed the L3 cache).  Measured at batch 1 (at batch 8 the 7x7
#: images of ResNet-50's layer4 have 32 tiles on F(4x4,3x3), 128 on
#: F(2x2,3x3): see winograd._plan_packing).  Past it, the
#: block's transformed inputs (a^2 x tiles x C/g) leave L2 and are streamed
#: once per block of output channels: with no limit, one thread, two
#: alternating runs, VGG-16 conv3_2 on F(4x4,3x3) (196 tiles) took 23-27 ms
#: against 17-20 transforming first, conv2_2 (784) 35-38 against 22, ResNet-50
#: layer1 3x3 (196) 2.2-2.5 against 1.5-2.0, GoogLeNet 3b 3x3 on F(2x2,3x3)
#: (196) 2.8-2.9 against 2.2-3.2; only VGG-16 conv4_2 on F(2x2,3x3) (196
#: tiles of 512 channels) gained, 24-25 against 31-40 ms.
WINOGRAD_IN_KERNEL_TILES = 64
#: Winograd: cost of one weight element transformed inside the kernel, in
#: plain-copy elements (the staging and transform of WINOGRAD_PACK_COST, with
#: the result in cache instead of memory).  A functional call minus a
#: Conv2d's call (weights transformed once), best of 3x3 alternating runs, one
#: thread, on 8 layers of 7x7 to 14x14 at batch 1: F(2x2,3x3) 0.09-1.23
#: (median 0.92), F(4x4,3x3) 0.27-0.94 (0.54), F(2x2,5x5) 1.26 (one layer).
#: ``python perf/pack_speed.py`` (every weight shape of the tables on 14x14,
#: results/pack_speed.md) then gave medians of 1.00, 0.74 and 1.66, and two
#: later runs (depthwise shapes left out) 1.49, 0.79, 1.85 and 0.63, 0.58,
#: 1.12.  Those ran with the transformed block's points 16 KiB apart (all in
#: one L1 set); one NR row of padding per point (winograd._winograd_conv)
#: then gave, on a 2-core Intel Xeon where the aliased layout had cost 1.20,
#: 1.19 and 1.71, medians of 0.60, 0.50, 1.26 and 0.62, 0.54, 1.04 (two
#: runs): priced at about those.
WINOGRAD_PACK_IN_KERNEL_COST = {"winograd-2x2-3x3": 0.6, "winograd-4x4-3x3": 0.5, "winograd-2x2-5x5": 1.15}
