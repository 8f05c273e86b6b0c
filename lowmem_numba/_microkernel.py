"""A register-tiled micro-kernel in explicit LLVM vector IR, callable from Numba.

Plain Numba loops cannot keep a GEMM accumulator tile in registers: LLVM
unrolls before it vectorises and spills (6.7-16.7 GFLOP/s measured, against
about 125 for a large sgemm; see ``/work/shared/notes/microkernel.md``).  The
intrinsics here emit the inner loop by hand with generic ``<VL x float>``
vectors and ``llvm.fma.vNf32``, so the whole ``MR x NR`` accumulator tile lives
in vector registers for the entire reduction.  Being a Numba ``@intrinsic``,
the IR becomes part of every kernel that calls it, so ``cache=True`` kernels
load in a new process with no compilation and no external symbol.

What one call computes
----------------------
One tile of ``mr <= MR`` output pixels by ``nr <= NR`` output channels::

    out[o(r) + l * o_lstep] = bias[b_off + l]
        + sum_{i < ni, j < nj, c < kc} w[w_off + i*w_istep + j*w_jstep + c*w_cstep + l]
                                        * x[x(r) + i*x_istep + j*x_jstep + c*x_cstep]

for ``r < mr`` and ``l < nr``.  The weights are the *vector* operand: ``NR``
contiguous lanes per reduction step, packed and zero-padded to ``NR`` by the
caller, so they are always read in full.  A tile wider than ``NR`` lanes
(``tile_wide``) reads its lanes past ``NR`` from the next packed block,
``w_next`` elements on (lane ``l`` at ``w_off + (l // NR)*w_next + l % NR``).
The input is the *broadcast* operand: one scalar per pixel per step, each
pixel addressed by its own offset, which serves any stride, dilation and
layout (NCHW: ``x_cstep = H*W``; NHWC: ``x_cstep = 1``).  Pixel ``r`` of the
tile is pixel ``p0 + r`` of a rectangle ``nx`` pixels wide, so a tile may wrap
onto the next row::

    (y, x) = divmod(p0 + r, nx)
    x(r) = x_off + y*x_ystep + x*x_xstep        o(r) = o_off + y*o_ystep + x*o_xstep

With ``has_bias = ACCUMULATE`` the bias is not added and the tile is added to
the output instead (``out[...] += sum``), so a long reduction can run in
blocks whose sums add up in the output.

Rows ``r >= mr`` of a partial tile re-read pixel ``mr - 1`` (always in bounds)
and are never stored; lanes ``l >= nr`` are never stored either, and the bias
is only read at lanes ``l < nr``.  Nothing outside the given blocks is read or
written.

Stores take one of three paths:

* channels contiguous (``o_lstep == 1``, NHWC) and a full tile: one vector
  store per accumulator;
* channels strided (NCHW) and a full tile whose pixels are contiguous in the
  output: the tile is transposed in registers (``shufflevector`` block swaps)
  and each channel's ``MR`` pixels are stored as one short vector;
* anything else (edge tiles): the tile goes through a stack buffer and is
  stored element by element.

Tile shapes per machine
-----------------------
Chosen at import from the host features LLVM reports (``TILE`` below); the IR
itself is target-independent (generic vectors are split or widened by the
backend), so it compiles wherever LLVM does, just not always at full speed.
"""

from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# ----------------------------------------------------------------- tuning

#: (vector lanes VL, tile rows MR, vectors per row NV) by host ISA.  NR = NV*VL
#: output channels per tile, MR*NV accumulators.  AVX-512 has 32 zmm registers:
#: 12x2 = 24 accumulators + 2 weight vectors + broadcasts fit without spills
#: (12x32 and 8x48 both measured 112-117 GFLOP/s on 1x1 shapes, notes/microkernel.md;
#: this module's 12x32 ran 1x1 GEMM loops at 105-117 against scipy sgemm's 82-102
#: on the same shapes, 64x64x3136 ... 2048x512x48, one thread, best of 7);
#: 12x32 wastes fewer lanes on channel counts that are multiples of 32 but not
#: of 48 (64, 96...).  AVX2 has 16 ymm registers: 6x2 = 12 accumulators + 2
#: + broadcasts.  The generic fallback (SSE, NEON...) uses 4 lanes and 8 accumulators.
#: MR must not exceed VL (the NCHW store transposes an MR x VL block padded to VL x VL).
TILE_AVX512 = (16, 12, 2)
TILE_AVX2 = (8, 6, 2)
TILE_GENERIC = (4, 4, 2)

#: Rows of the small kernel used for remainders (``mr <= SMALL_MR``): with NV
#: vectors it keeps SMALL_MR*NV >= 8 independent FMAs in flight (FMA latency 4
#: cycles x 2 pipes on Zen 4), so a 1-4 pixel remainder costs a third of a full
#: AVX-512 tile instead of a whole one.
SMALL_MR_AVX512 = 4
SMALL_MR_AVX2 = 2
SMALL_MR_GENERIC = 2

#: Rows of the wide tile (``NV + 1`` vectors: a full block and the half block
#: after it, the last two blocks of M/g = 48, 112, 144, 208 ... on AVX-512),
#: as many as fit the accumulators beside the weight vectors and a broadcast:
#: 8 x 3 = 24 of 32 zmm, 4 x 3 = 12 of 16 ymm, 2 x 3 of the generic 16.
WIDE_MR_AVX512 = 8
WIDE_MR_AVX2 = 4
WIDE_MR_GENERIC = 2

#: Reduction steps ahead that the tile kernels prefetch their input.  An NCHW
#: step reads a new plane (H*W floats on, a new 4 KiB page every step on a
#: 56x56 plane), which the hardware prefetchers do not follow: on a 2-core
#: Intel Xeon (AVX-512, 48 KiB L1d, 2 MiB L2), one thread, best of three
#: alternating processes, direct-ukernel ran 1x1 256->128 on 56x56 at 121
#: GFLOP/s with it against 82 without, 512->256 on 28x28 148 against 108,
#: 3x3 512->512 14x14 stride 2 135 against 120; direct-pixels 1x1 128->128 and
#: 256->128 on 56x56 177 / 172 against 149 / 142; channels-last and Winograd
#: inputs (consecutive steps adjacent) within noise.  4 and 32 steps were
#: worse than 8 on those shapes; 16 about equal.
PREFETCH_STEPS = 8


def host_isa() -> str:
    """The vector ISA class of this host, as LLVM reports it: ``"avx512"``,
    ``"avx2"`` or ``"generic"``."""
    try:
        features = llvm.get_host_cpu_features()
    except Exception:  # some hosts report nothing; generic IR works everywhere
        return "generic"
    if features.get("avx512f"):
        return "avx512"
    if features.get("avx2") and features.get("fma"):
        return "avx2"
    return "generic"


ISA = host_isa()
VL, MR, NV = {"avx512": TILE_AVX512, "avx2": TILE_AVX2}.get(ISA, TILE_GENERIC)
NR = VL * NV
SMALL_MR = {"avx512": SMALL_MR_AVX512, "avx2": SMALL_MR_AVX2}.get(ISA, SMALL_MR_GENERIC)
WIDE_MR = {"avx512": WIDE_MR_AVX512, "avx2": WIDE_MR_AVX2}.get(ISA, WIDE_MR_GENERIC)
TILE = (MR, NR)


#: Values of the tile kernel's ``has_bias`` argument: store the sums as they
#: are (0), plus ``bias[b_off + l]`` (HAS_BIAS), or added to what the output
#: already holds (ACCUMULATE: a reduction split into blocks, as Winograd's).
HAS_BIAS = 1
ACCUMULATE = 2

# ----------------------------------------------------------------- IR emission

_I64 = ir.IntType(64)
_F32 = ir.FloatType()


def _const(value):
    return ir.Constant(_I64, value)


def _element_ptr(builder, base, index):
    return builder.gep(base, [index])


def _load_vector(builder, base, index, vector_type):
    ptr = builder.bitcast(_element_ptr(builder, base, index), vector_type.as_pointer())
    return builder.load(ptr, align=4)


def _store_vector(builder, value, base, index):
    ptr = builder.bitcast(_element_ptr(builder, base, index), value.type.as_pointer())
    builder.store(value, ptr, align=4)


def _masked_store(builder, value, base, index, mask):
    """Store the lanes of ``value`` where ``mask`` (a vector of i1) is set,
    at ``base[index:]`` (``llvm.masked.store``: the other lanes' memory is
    neither read nor written)."""
    vty = value.type
    ptr = builder.bitcast(_element_ptr(builder, base, index), vty.as_pointer())
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), ir.IntType(32), mask.type]),
        f"llvm.masked.store.v{vty.count}f32.p0")
    builder.call(fn, [value, ptr, ir.Constant(ir.IntType(32), 4), mask])


def _first_lanes(builder, count, vl):
    """The i1 mask of lanes ``< count`` (an i64; none if ``count <= 0``) of a ``vl``-lane vector,
    compared as i32 lanes (one vector compare)."""
    count = builder.trunc(builder.select(builder.icmp_signed(">", count, _const(vl)), _const(vl), count),
                          ir.IntType(32))
    return builder.icmp_signed("<", _mask(range(vl)), _splat(builder, count, ir.VectorType(ir.IntType(32), vl)))


def _mask(indices):
    return ir.Constant(ir.VectorType(ir.IntType(32), len(indices)), list(indices))


def _splat(builder, scalar, vty):
    """``scalar`` in every lane of a vector of type ``vty`` (a broadcast)."""
    lanes = builder.insert_element(ir.Constant(vty, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(lanes, ir.Constant(vty, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), vty.count), [0] * vty.count))


def _prefetch(builder, base, index, locality=3):
    """Hint the cache line holding ``base[index]`` into L1 (``locality`` 3)
    or L2 (2); never faults."""
    i8p = ir.IntType(8).as_pointer()
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p] + [ir.IntType(32)] * 3),
                                        "llvm.prefetch.p0")
    ptr = builder.bitcast(_element_ptr(builder, base, index), i8p)
    builder.call(fn, [ptr, ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), locality),
                      ir.Constant(ir.IntType(32), 1)])


def _fma(builder, vty):
    """The ``llvm.fma`` intrinsic on vectors of type ``vty``."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]),
                                          f"llvm.fma.v{vty.count}f32")


def _depthwise_start(builder, vty, taps, pixels, w_ptr, w_off, w_step, b_ptr, b_off, d_ptr, d_off, d_step,
                     accumulate):
    """What both depthwise kernels begin with: the ``taps`` weight vectors,
    each output pixel's offset, and its starting sum (the output's value
    with ``accumulate != 0``, else the ``base`` vector)."""
    weights = [_load_vector(builder, w_ptr, builder.add(w_off, builder.mul(_const(t), w_step)), vty)
               for t in range(taps)]
    outputs = [builder.add(d_off, builder.mul(_const(p), d_step)) for p in range(pixels)]
    initial = _load_vector(builder, b_ptr, b_off, vty)
    add = builder.icmp_signed("!=", accumulate, _const(0))
    accs = [builder.select(add, _load_vector(builder, d_ptr, at, vty), initial) for at in outputs]
    return weights, outputs, accs


def _transpose(builder, rows, lanes):
    """Transpose a ``lanes x lanes`` block held as ``lanes`` vectors, by
    swapping off-diagonal blocks of halving size (log2(lanes) rounds of
    two-input shuffles, which the backend maps to permute instructions)."""
    rows = list(rows)
    block = lanes // 2
    while block >= 1:
        low = [l if not l & block else lanes + l - block for l in range(lanes)]
        high = [l + block if not l & block else lanes + l for l in range(lanes)]
        for i in range(lanes):
            if not i & block:
                a, b = rows[i], rows[i + block]
                rows[i] = builder.shuffle_vector(a, b, _mask(low))
                rows[i + block] = builder.shuffle_vector(a, b, _mask(high))
        block //= 2
    return rows


def _emit_tile(context, builder, sig, args, mr_max, nv, vl):
    (w_t, x_t, out_t, bias_t) = (sig.args[0], sig.args[6], sig.args[19], sig.args[25])
    (w, w_off, w_cstep, w_jstep, w_istep, w_next,
     x, x_off, x_ystep, x_xstep, x_cstep, x_jstep, x_istep,
     p0, nx, mr, kc, nj, ni,
     out, o_off, o_ystep, o_xstep, o_lstep, nr, bias, b_off, has_bias) = args
    nr_max = nv * vl
    vty = ir.VectorType(_F32, vl)
    zero = ir.Constant(vty, [0.0] * vl)
    fma = _fma(builder, vty)
    w_ptr = context.make_array(w_t)(context, builder, w).data
    x_ptr = context.make_array(x_t)(context, builder, x).data
    o_ptr = context.make_array(out_t)(context, builder, out).data
    b_ptr = context.make_array(bias_t)(context, builder, bias).data

    # Per-pixel input and output offsets, stepping (y, x) through the
    # rectangle without division; rows past mr repeat pixel mr - 1.
    y = builder.sdiv(p0, nx)
    xx = builder.sub(p0, builder.mul(y, nx))
    x_rows, o_rows = [], []
    for r in range(mr_max):
        if r:
            advance = builder.icmp_signed("<", _const(r), mr)
            nxt = builder.add(xx, _const(1))
            wrap = builder.icmp_signed("==", nxt, nx)
            nxt_x = builder.select(wrap, _const(0), nxt)
            nxt_y = builder.select(wrap, builder.add(y, _const(1)), y)
            xx = builder.select(advance, nxt_x, xx)
            y = builder.select(advance, nxt_y, y)
        x_rows.append(builder.add(x_off, builder.add(builder.mul(y, x_ystep), builder.mul(xx, x_xstep))))
        o_rows.append(builder.add(o_off, builder.add(builder.mul(y, o_ystep), builder.mul(xx, o_xstep))))

    # Accumulators in allocas: SROA/mem2reg turns them into SSA values carried
    # through the loops, i.e. registers.
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(nv)] for _ in range(mr_max)]

    with cgutils.for_range(builder, ni) as loop_i:
        i = loop_i.index
        w_i = builder.add(w_off, builder.mul(i, w_istep))
        x_i = builder.mul(i, x_istep)
        with cgutils.for_range(builder, nj) as loop_j:
            j = loop_j.index
            w_ij = builder.add(w_i, builder.mul(j, w_jstep))
            x_ij = builder.add(x_i, builder.mul(j, x_jstep))
            x_bases = [builder.add(row, x_ij) for row in x_rows]
            with cgutils.for_range(builder, kc) as loop_c:
                c = loop_c.index
                w_at = builder.add(w_ij, builder.mul(c, w_cstep))
                block_at = [w_at] + [builder.add(w_at, builder.mul(w_next, _const(b)))
                                     for b in range(1, (nv + NV - 1) // NV)]
                x_at = builder.mul(c, x_cstep)
                # The first and last pixel's input PREFETCH_STEPS steps ahead
                # (in NCHW each step is a new plane, H*W floats on: the
                # hardware prefetchers do not follow; see PREFETCH_STEPS).
                ahead = builder.mul(builder.add(c, _const(PREFETCH_STEPS)), x_cstep)
                for r in sorted({0, mr_max - 1}):
                    _prefetch(builder, x_ptr, builder.add(x_bases[r], ahead))
                weights = [_load_vector(builder, w_ptr, builder.add(block_at[v // NV], _const(v % NV * vl)), vty)
                           for v in range(nv)]
                for r in range(mr_max):
                    scalar = builder.load(_element_ptr(builder, x_ptr, builder.add(x_bases[r], x_at)))
                    vec = _splat(builder, scalar, vty)
                    for v in range(nv):
                        acc = builder.load(accs[r][v])
                        builder.store(builder.call(fma, [weights[v], vec, acc]), accs[r][v])

    full = builder.and_(builder.icmp_signed("==", mr, _const(mr_max)),
                        builder.icmp_signed("==", nr, _const(nr_max)))
    lanes_contiguous = builder.icmp_signed("==", o_lstep, _const(1))
    # Pixels contiguous in the output: offsets strictly increase, so the last
    # one being mr_max - 1 past the first means every step is 1.
    pixels_contiguous = builder.icmp_signed(
        "==", builder.sub(o_rows[-1], o_rows[0]), _const(mr_max - 1))
    bias_on = builder.icmp_signed("==", has_bias, _const(HAS_BIAS))
    accumulate = builder.icmp_signed("==", has_bias, _const(ACCUMULATE))

    def add_bias_vectors():
        with builder.if_then(bias_on):
            for v in range(nv):
                b = _load_vector(builder, b_ptr, builder.add(b_off, _const(v * vl)), vty)
                for r in range(mr_max):
                    builder.store(builder.fadd(builder.load(accs[r][v]), b), accs[r][v])

    fast_nhwc = builder.and_(full, lanes_contiguous)
    fast_nchw = builder.and_(builder.and_(full, builder.not_(lanes_contiguous)), pixels_contiguous)
    with builder.if_else(fast_nhwc) as (then_nhwc, otherwise):
        with then_nhwc:
            add_bias_vectors()
            with builder.if_then(accumulate):
                for r in range(mr_max):
                    for v in range(nv):
                        old = _load_vector(builder, o_ptr, builder.add(o_rows[r], _const(v * vl)), vty)
                        builder.store(builder.fadd(old, builder.load(accs[r][v])), accs[r][v])
            for r in range(mr_max):
                for v in range(nv):
                    _store_vector(builder, builder.load(accs[r][v]), o_ptr,
                                  builder.add(o_rows[r], _const(v * vl)))
        with otherwise:
            with builder.if_else(fast_nchw) as (then_nchw, general):
                with then_nchw:
                    add_bias_vectors()
                    short = ir.Constant(ir.VectorType(ir.IntType(32), mr_max), list(range(mr_max)))

                    def store_channels(add_to_output):
                        for v in range(nv):
                            block = [builder.load(accs[r][v]) for r in range(mr_max)]
                            block += [zero] * (vl - mr_max)
                            columns = _transpose(builder, block, vl)
                            for lane in range(vl):
                                pixels = builder.shuffle_vector(columns[lane], ir.Constant(vty, ir.Undefined),
                                                                short)
                                at = builder.add(o_rows[0], builder.mul(_const(v * vl + lane), o_lstep))
                                if add_to_output:  # a channel's pixels are one short vector in the output
                                    pixels = builder.fadd(_load_vector(builder, o_ptr, at, pixels.type), pixels)
                                _store_vector(builder, pixels, o_ptr, at)

                    with builder.if_else(accumulate) as (then_add, then_store):
                        with then_add:
                            store_channels(True)
                        with then_store:
                            store_channels(False)
                with general:
                    _emit_general_store(builder, accs, o_rows, o_ptr, o_lstep, mr, nr, b_ptr, b_off,
                                        bias_on, accumulate, mr_max, nv, vl)
    return context.get_dummy_value()


def _emit_general_store(builder, accs, o_rows, o_ptr, o_lstep, mr, nr, b_ptr, b_off, bias_on,
                        accumulate, mr_max, nv, vl):
    """Edge tiles: spill the tile to a stack buffer, store r < mr, l < nr."""
    nr_max = nv * vl
    buffer = cgutils.alloca_once(builder, _F32, size=mr_max * nr_max)
    offsets = cgutils.alloca_once(builder, _I64, size=mr_max)
    for r in range(mr_max):
        builder.store(o_rows[r], _element_ptr(builder, offsets, _const(r)))
        for v in range(nv):
            _store_vector(builder, builder.load(accs[r][v]), buffer, _const(r * nr_max + v * vl))
    with cgutils.for_range(builder, mr) as loop_r:
        r = loop_r.index
        row = builder.load(_element_ptr(builder, offsets, r))
        with cgutils.for_range(builder, nr) as loop_l:
            lane = loop_l.index
            value_ptr = _element_ptr(builder, buffer, builder.add(builder.mul(r, _const(nr_max)), lane))
            with builder.if_then(bias_on):
                biased = builder.fadd(builder.load(value_ptr),
                                      builder.load(_element_ptr(builder, b_ptr, builder.add(b_off, lane))))
                builder.store(biased, value_ptr)
            target = _element_ptr(builder, o_ptr, builder.add(row, builder.mul(lane, o_lstep)))
            with builder.if_then(accumulate):
                builder.store(builder.fadd(builder.load(target), builder.load(value_ptr)), value_ptr)
            builder.store(builder.load(value_ptr), target)


def _is_f32_array(t):
    return isinstance(t, types.Array) and t.dtype == types.float32 and t.layout == "C"


def _is_i64_array(t):
    return isinstance(t, types.Array) and t.dtype == types.int64 and t.layout == "C"


@intrinsic
def prefetch_to_l2(typingctx, array, index):
    """Hint the cache line holding ``array[index]`` (a C-contiguous float32
    array, an int64 index) into L2; an address outside the array is harmless
    (a prefetch never faults)."""
    if not (_is_f32_array(array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        index64 = context.cast(builder, args[1], signature.args[1], types.int64)
        _prefetch(builder, data, index64, locality=2)
        return context.get_dummy_value()
    return types.void(array, index), codegen


def make_tile_kernel(mr_max, nv=NV, vl=VL):
    """A Numba intrinsic computing one ``mr <= mr_max`` by ``nr <= nv*vl`` tile.

    Parameters
    ----------
    mr_max : int
        Rows (output pixels) of the register tile; at most ``vl``.
    nv, vl : int
        Vectors per row and lanes per vector: ``nv*vl`` output channels.

    Returns
    -------
    intrinsic
        ``tile(w, w_off, w_cstep, w_jstep, w_istep, w_next, x, x_off, x_ystep,
        x_xstep, x_cstep, x_jstep, x_istep, p0, nx, mr, kc, nj, ni, out, o_off,
        o_ystep, o_xstep, o_lstep, nr, bias, b_off, has_bias)``, see the module
        docstring.
        ``w``, ``x``, ``out`` and ``bias`` are C-contiguous float32 arrays (the
        arrays themselves, so Numba keeps them alive); the rest are integers.
        The caller guarantees every addressed element is in bounds.
    """
    if not 1 <= mr_max <= vl:
        raise ValueError(f"tile rows {mr_max} must be in [1, {vl}]")

    def tile(typingctx, w, w_off, w_cstep, w_jstep, w_istep, w_next, x, x_off, x_ystep, x_xstep, x_cstep,
             x_jstep, x_istep, p0, nx, mr, kc, nj, ni, out, o_off, o_ystep, o_xstep, o_lstep, nr,
             bias, b_off, has_bias):
        if not all(_is_f32_array(a) for a in (w, x, out, bias)):
            return None
        i64 = types.int64
        sig = types.void(w, i64, i64, i64, i64, i64, x, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64,
                         i64, i64, out, i64, i64, i64, i64, i64, bias, i64, i64)

        def codegen(context, builder, signature, args):
            return _emit_tile(context, builder, signature, args, mr_max, nv, vl)

        return sig, codegen

    tile.__name__ = f"tile_{mr_max}x{nv * vl}"
    return intrinsic(tile)


def make_transpose_kernel(vl=VL):
    """A Numba intrinsic transposing one ``vl x vl`` float32 block in registers.

    ``transpose(src, s_off, s_stride, dst, d_off, offsets, o_first)`` reads
    rows ``src[s_off + r*s_stride : ... + vl]`` for ``r < vl`` (one vector
    load each), transposes them with the shuffles of the NCHW tile store, and
    writes column ``j`` to ``dst[d_off + offsets[o_first + j] : ... + vl]``
    (one vector store each), so that the columns may be scattered (weight
    packing sends consecutive taps to different rows of the packed layout).
    ``src`` and ``dst`` are C-contiguous float32 arrays and ``offsets`` an
    int64 one; the caller guarantees every addressed element is in bounds.
    """

    def transpose(typingctx, src, s_off, s_stride, dst, d_off, offsets, o_first):
        if not (_is_f32_array(src) and _is_f32_array(dst) and _is_i64_array(offsets)):
            return None
        i64 = types.int64
        sig = types.void(src, i64, i64, dst, i64, offsets, i64)

        def codegen(context, builder, signature, args):
            src_v, s_off_v, s_stride_v, dst_v, d_off_v, offsets_v, o_first_v = args
            vty = ir.VectorType(_F32, vl)
            s_ptr = context.make_array(signature.args[0])(context, builder, src_v).data
            d_ptr = context.make_array(signature.args[3])(context, builder, dst_v).data
            o_ptr = context.make_array(signature.args[5])(context, builder, offsets_v).data
            rows = [_load_vector(builder, s_ptr, builder.add(s_off_v, builder.mul(_const(r), s_stride_v)), vty)
                    for r in range(vl)]
            for j, column in enumerate(_transpose(builder, rows, vl)):
                offset = builder.load(_element_ptr(builder, o_ptr, builder.add(o_first_v, _const(j))))
                _store_vector(builder, column, d_ptr, builder.add(d_off_v, offset))
            return context.get_dummy_value()

        return sig, codegen

    transpose.__name__ = f"transpose_{vl}x{vl}"
    return intrinsic(transpose)


def make_tile_row_transpose_kernel(period, vl=VL):
    """A Numba intrinsic storing up to ``vl`` consecutive pixels of one row
    of output tiles, ``period`` pixels per tile, as channel vectors
    (Winograd's NCHW output: a tile's pixels hold their channels in lanes).

    ``transpose(src, s_off, s_pixel, s_tile, valid, dst, d_off, d_stride,
    bias, b_off, has_bias)`` loads, for ``r < vl``, the ``vl`` lanes at
    ``src[s_off + (r % period)*s_pixel + (r // period)*s_tile]`` (pixel
    ``r``: its place in its tile, then its tile; pixels ``r >= valid`` load
    pixel ``valid - 1`` instead), transposes them in registers, and stores
    lane ``j`` of pixels ``r < valid``, plus ``bias[b_off + j]`` when
    ``has_bias != 0``, at ``dst[d_off + j*d_stride :][:valid]``: one vector
    store per channel (masked when ``valid < vl``) instead of ``valid``
    scalar ones per pixel.  ``1 <= valid <= vl``; arrays are C-contiguous
    float32; the caller keeps the addresses of pixels ``r < valid`` in
    bounds.
    """
    assert vl % period == 0

    def transpose(typingctx, src, s_off, s_pixel, s_tile, valid, dst, d_off, d_stride, bias, b_off, has_bias):
        if not all(_is_f32_array(a) for a in (src, dst, bias)):
            return None
        i64 = types.int64
        sig = types.void(src, i64, i64, i64, i64, dst, i64, i64, bias, i64, i64)

        def codegen(context, builder, signature, args):
            (src_v, s_off_v, s_pixel_v, s_tile_v, valid_v, dst_v, d_off_v, d_stride_v, bias_v, b_off_v,
             has_bias_v) = args
            vty = ir.VectorType(_F32, vl)
            s_ptr, d_ptr, b_ptr = (context.make_array(signature.args[k])(context, builder, value).data
                                   for k, value in ((0, src_v), (5, dst_v), (8, bias_v)))
            def pixel_at(r):
                return builder.add(builder.mul(builder.urem(r, _const(period)), s_pixel_v),
                                   builder.mul(builder.udiv(r, _const(period)), s_tile_v))

            last = pixel_at(builder.sub(valid_v, _const(1)))
            rows = []
            for r in range(vl):
                # Pixel r, or the last valid one: no load past the pixels given.
                at = builder.select(builder.icmp_signed("<", _const(r), valid_v), pixel_at(_const(r)), last)
                rows.append(_load_vector(builder, s_ptr, builder.add(s_off_v, at), vty))
            columns = _transpose(builder, rows, vl)
            mask = _first_lanes(builder, valid_v, vl)
            full = builder.icmp_signed("==", valid_v, _const(vl))

            at = [builder.add(d_off_v, builder.mul(_const(j), d_stride_v)) for j in range(vl)]

            def store(values):
                with builder.if_else(full) as (whole, part):
                    with whole:
                        for j, value in enumerate(values):
                            _store_vector(builder, value, d_ptr, at[j])
                    with part:
                        for j, value in enumerate(values):
                            _masked_store(builder, value, d_ptr, at[j], mask)

            # The bias is read only when there is one.
            with builder.if_else(builder.icmp_signed("!=", has_bias_v, _const(0))) as (biased, plain):
                with biased:
                    store([builder.fadd(column, _splat(builder, builder.load(_element_ptr(
                        builder, b_ptr, builder.add(b_off_v, _const(j)))), vty)) for j, column in enumerate(columns)])
                with plain:
                    store(columns)
            return context.get_dummy_value()

        return sig, codegen

    transpose.__name__ = f"tile_row_transpose_{period}x{vl}"
    return intrinsic(transpose)


def _paired_rows(coefficients):
    """``[(i, j)]``: rows ``j > i`` equal to row ``i`` with the signs of the
    odd-indexed coefficients flipped, both parts non-zero (the rows of a
    Toom-Cook ``G`` at the points ``+p`` and ``-p``), each row in one pair
    at most."""
    pairs, taken = [], set()
    for i, row in enumerate(coefficients):
        odd = any(c != 0.0 for c in row[1::2])
        even = any(c != 0.0 for c in row[0::2])
        if i in taken or not (odd and even):
            continue
        flipped = [c if k % 2 == 0 else -c for k, c in enumerate(row)]
        for j in range(i + 1, len(coefficients)):
            if j not in taken and coefficients[j] == flipped:
                pairs.append((i, j))
                taken.update((i, j))
                break
    return pairs


def make_separable_transform(matrix, vl=VL, wide=True):
    """A Numba intrinsic computing ``U = A X A^T`` for a constant ``a x r``
    matrix ``A``, lane by lane over ``vl`` lanes: in float64 rounded once
    (``wide``, the weight transforms) or in float32 (the input transforms).

    ``transform(src, s_off, s_row, s_col, dst, d_off, d_row, d_col)`` reads
    the ``r x r`` inputs ``X[k][l]`` as float32 vectors ``src[s_off + k*s_row
    + l*s_col : ... + vl]`` and writes ``U[i][j]`` to ``dst[d_off + i*d_row +
    j*d_col : ... + vl]``, computing ``P = A X`` and then ``U = P A^T``,
    each sum over the non-zero coefficients only (so that 0 * inf never
    makes a NaN).  In float32 each sum starts from 0.0 and adds
    ``coefficient * term`` in index order, the roundings of the loops over
    memory it replaced.  With the coefficients constants in the code and
    every value in a register, this is a few vector instructions per output;
    those loops took 15-20 ns per kernel (Winograd weight transforms), and
    F(4x4,3x3)'s input transform of 16 tiles of 144-256 channels (14x14
    images) 0.12-0.16 ms, a fifth of the layer's time on one thread.
    In float64 (rounded once at the end), rows that differ only in the signs
    of their odd coefficients (a Toom-Cook ``G`` at the points ``+p`` and
    ``-p``: :func:`_paired_rows`) share their even and odd partial sums,
    each a chain of fused multiply-adds, and are their sum and difference;
    other rows are one such chain.  Against plain sums, functional batch-1
    calls (the weights transformed inside the kernel for every call) on the
    Intel Xeon kind, one thread, best of 3 alternating processes: F(4x4,3x3)
    on ResNet-50's layer4 3x3 2.43 -> 2.20 ms, AlexNet's conv4 2.46 -> 2.35,
    GoogLeNet's 4e 3x3 0.94 -> 0.89, ResNet-50's layer3 3x3 1.17 -> 1.14
    (F(2x2,3x3) there 1.16 -> 1.15).  Paired likewise, the float32 input
    transform ran those layers' prepacked calls at 0.96-1.02x the speed
    (batch 1 and 8), so it keeps the plain sums.
    ``src`` and ``dst`` are C-contiguous float32 arrays; the caller guarantees
    every addressed element is in bounds.
    """
    coefficients = [[float(c) for c in row] for row in matrix]
    a, r = len(coefficients), len(coefficients[0])
    pairs = _paired_rows(coefficients)

    def transform(typingctx, src, s_off, s_row, s_col, dst, d_off, d_row, d_col):
        if not (_is_f32_array(src) and _is_f32_array(dst)):
            return None
        i64 = types.int64
        sig = types.void(src, i64, i64, i64, dst, i64, i64, i64)

        def codegen(context, builder, signature, args):
            src_v, s_off_v, s_row_v, s_col_v, dst_v, d_off_v, d_row_v, d_col_v = args
            fty = ir.VectorType(_F32, vl)
            cty = ir.VectorType(ir.DoubleType(), vl) if wide else fty
            s_ptr = context.make_array(signature.args[0])(context, builder, src_v).data
            d_ptr = context.make_array(signature.args[4])(context, builder, dst_v).data

            def combine(row, terms):
                """``sum(row[k] * terms[k])`` from 0.0, in index order."""
                total = ir.Constant(cty, [0.0] * vl)
                for coefficient, term in zip(row, terms):
                    if coefficient != 0.0:
                        total = builder.fadd(total, builder.fmul(ir.Constant(cty, [coefficient] * vl), term))
                return total

            fused = _fma(builder, cty) if wide else None  # the float32 sums are not fused (see above)

            def partial(row, terms, indices):
                """``sum(row[k] * terms[k])`` over ``indices`` with non-zero
                coefficients, in index order, fused (None if there are none)."""
                total = None
                for k in indices:
                    if row[k] == 0.0:
                        continue
                    weight = ir.Constant(cty, [row[k]] * vl)
                    total = (builder.fmul(weight, terms[k]) if total is None
                             else builder.call(fused, [weight, terms[k], total]))
                return total

            def combine_rows(terms):
                """Every row of ``coefficients`` applied to ``terms`` (float64:
                the paired rows from shared partial sums)."""
                if not wide:
                    return [combine(row, terms) for row in coefficients]
                results = [None] * a
                for i, j in pairs:
                    even = partial(coefficients[i], terms, range(0, r, 2))
                    odd = partial(coefficients[i], terms, range(1, r, 2))
                    results[i], results[j] = builder.fadd(even, odd), builder.fsub(even, odd)
                for i in range(a):
                    if results[i] is None:
                        total = partial(coefficients[i], terms, range(r))
                        results[i] = ir.Constant(cty, [0.0] * vl) if total is None else total
                return results

            def load(k, l):
                at = builder.add(s_off_v, builder.add(builder.mul(_const(k), s_row_v), builder.mul(_const(l), s_col_v)))
                value = _load_vector(builder, s_ptr, at, fty)
                return builder.fpext(value, cty) if wide else value

            x = [[load(k, l) for l in range(r)] for k in range(r)]
            columns = [combine_rows([x[k][l] for k in range(r)]) for l in range(r)]
            p = [[columns[l][i] for l in range(r)] for i in range(a)]
            for i in range(a):
                u_row = combine_rows(p[i])
                for j in range(a):
                    u = u_row[j]
                    at = builder.add(d_off_v, builder.add(builder.mul(_const(i), d_row_v),
                                                          builder.mul(_const(j), d_col_v)))
                    _store_vector(builder, builder.fptrunc(u, fty) if wide else u, d_ptr, at)
            return context.get_dummy_value()

        return sig, codegen

    transform.__name__ = f"separable_transform_{a}x{r}" + ("" if wide else "_f32")
    return intrinsic(transform)


def make_depthwise_kernel(pixels, taps=9, vl=VL):
    """A Numba intrinsic for up to ``taps`` taps of ``pixels`` output pixels of
    ``vl`` channels each (depthwise convolution, channels in the lanes).

    ``depthwise(src, s_off, s_step, offsets, o_first, count, w, w_off, w_step,
    base, b_off, dst, d_off, d_step, accumulate)`` computes, for ``p < pixels``::

        dst[d_off + p*d_step : ... + vl] = init_p
            + sum_{t < count} w[w_off + t*w_step : ... + vl] * src[s_off + p*s_step + offsets[o_first + t] : ... + vl]

    where ``init_p`` is ``dst``'s old value with ``accumulate != 0`` (later
    blocks of a kernel larger than ``taps``) and ``base[b_off : ... + vl]``
    (the bias, or zeros) otherwise; ``count <= taps``.  Each tap is one
    ``llvm.fma`` in tap order; the ``count`` weight vectors are loaded once for
    all pixels and stay in registers, the pixels' sums are independent chains
    (8 pixels x 9 taps: 9 weight + 8 accumulator registers).  Taps ``t >=
    count`` are not added (their products, possibly NaN, are discarded).
    Arrays are C-contiguous float32 (``offsets`` int64); the caller guarantees
    every addressed element is in bounds.
    """

    def depthwise(typingctx, src, s_off, s_step, offsets, o_first, count, w, w_off, w_step, base, b_off,
                  dst, d_off, d_step, accumulate):
        if not (all(_is_f32_array(a) for a in (src, w, base, dst)) and _is_i64_array(offsets)):
            return None
        i64 = types.int64
        sig = types.void(src, i64, i64, offsets, i64, i64, w, i64, i64, base, i64, dst, i64, i64, i64)

        def codegen(context, builder, signature, args):
            (src_v, s_off_v, s_step_v, offsets_v, o_first_v, count_v, w_v, w_off_v, w_step_v, base_v, b_off_v,
             dst_v, d_off_v, d_step_v, accumulate_v) = args
            vty = ir.VectorType(_F32, vl)
            fma = _fma(builder, vty)
            s_ptr, o_ptr, w_ptr, b_ptr, d_ptr = (
                context.make_array(signature.args[k])(context, builder, value).data
                for k, value in ((0, src_v), (3, offsets_v), (6, w_v), (9, base_v), (11, dst_v)))
            tap_offsets = [builder.load(_element_ptr(builder, o_ptr, builder.add(o_first_v, _const(t))))
                           for t in range(taps)]
            weights, outputs, accs = _depthwise_start(builder, vty, taps, pixels, w_ptr, w_off_v, w_step_v, b_ptr,
                                                      b_off_v, d_ptr, d_off_v, d_step_v, accumulate_v)
            inputs = [builder.add(s_off_v, builder.mul(_const(p), s_step_v)) for p in range(pixels)]

            def tap(t, p, acc):
                value = _load_vector(builder, s_ptr, builder.add(inputs[p], tap_offsets[t]), vty)
                return builder.call(fma, [weights[t], value, acc])

            # Every tap (the common case) straight; fewer taps (the last block
            # of a larger kernel) each behind its own test.
            full = builder.icmp_signed(">=", count_v, _const(taps))
            with builder.if_else(full) as (then_full, partial):
                with then_full:
                    for p in range(pixels):
                        acc = accs[p]
                        for t in range(taps):
                            acc = tap(t, p, acc)
                        _store_vector(builder, acc, d_ptr, outputs[p])
                with partial:
                    cells = [cgutils.alloca_once_value(builder, acc) for acc in accs]
                    for t in range(taps):
                        with builder.if_then(builder.icmp_signed(">", count_v, _const(t))):
                            for p in range(pixels):
                                builder.store(tap(t, p, builder.load(cells[p])), cells[p])
                    for p in range(pixels):
                        _store_vector(builder, builder.load(cells[p]), d_ptr, outputs[p])
            return context.get_dummy_value()

        return sig, codegen

    depthwise.__name__ = f"depthwise_{pixels}x{vl}_{taps}"
    return intrinsic(depthwise)


def make_depthwise_row_kernel(pixels, stride, vl=VL):
    """:func:`make_depthwise_kernel` for a 3x3 kernel with dilation 1 and a
    pixel step of ``stride`` pixels of ``vl`` floats, in rows of input pixels.

    ``depthwise(src, s_off, row_step, w, w_off, w_step, base, b_off, dst, d_off,
    d_step, accumulate)``: tap ``(i, j)`` of output pixel ``p`` reads
    ``src[s_off + i*row_step + (p*stride + j)*vl : ... + vl]`` (weight
    ``w[w_off + (3i + j)*w_step : ... + vl]``); the rest as in
    :func:`make_depthwise_kernel`, with the same sums in the same order.
    Neighbouring pixels share input columns (pixel ``p``'s tap ``j + stride``
    is pixel ``p + 1``'s tap ``j``), and each column is loaded once: 30 loads
    instead of 72 for eight pixels at stride 1, 51 at stride 2.
    """

    def depthwise(typingctx, src, s_off, row_step, w, w_off, w_step, base, b_off, dst, d_off, d_step,
                  accumulate):
        if not all(_is_f32_array(a) for a in (src, w, base, dst)):
            return None
        i64 = types.int64
        sig = types.void(src, i64, i64, w, i64, i64, base, i64, dst, i64, i64, i64)

        def codegen(context, builder, signature, args):
            (src_v, s_off_v, row_step_v, w_v, w_off_v, w_step_v, base_v, b_off_v, dst_v, d_off_v, d_step_v,
             accumulate_v) = args
            vty = ir.VectorType(_F32, vl)
            fma = _fma(builder, vty)
            s_ptr, w_ptr, b_ptr, d_ptr = (
                context.make_array(signature.args[k])(context, builder, value).data
                for k, value in ((0, src_v), (3, w_v), (6, base_v), (8, dst_v)))
            weights, outputs, accs = _depthwise_start(builder, vty, 9, pixels, w_ptr, w_off_v, w_step_v, b_ptr,
                                                      b_off_v, d_ptr, d_off_v, d_step_v, accumulate_v)
            for i in range(3):
                row = builder.add(s_off_v, builder.mul(_const(i), row_step_v))
                columns = {}
                for p in range(pixels):
                    for j in range(3):
                        c = p * stride + j
                        if c not in columns:
                            columns[c] = _load_vector(builder, s_ptr, builder.add(row, _const(c * vl)), vty)
                        accs[p] = builder.call(fma, [weights[3 * i + j], columns[c], accs[p]])
            for p in range(pixels):
                _store_vector(builder, accs[p], d_ptr, outputs[p])
            return context.get_dummy_value()

        return sig, codegen

    depthwise.__name__ = f"depthwise_rows_{pixels}x{vl}_s{stride}"
    return intrinsic(depthwise)


def make_pixel_tile_kernel(vectors, channels, vl=VL, strided=False, copies=False, prefetch_next=False):
    """A Numba intrinsic for a tile of ``vectors * vl`` output pixels in the
    lanes by ``channels`` output channels (direct convolution into NCHW
    planes: each channel's pixels are stored as they lie in its plane).

    ``pixel_tile(w, w_off, w_mstep, x, x_off, offsets, o_first, count, out,
    o_off, o_mstep, valid, mc, bias, b_off, has_bias)`` computes, for
    ``m < mc`` and ``q < valid`` (``valid <= vectors*vl``, ``mc <= channels``)::

        out[o_off + m*o_mstep + q] = (bias[b_off + m] if has_bias else 0)
            + sum_{k < count} w[w_off + m*w_mstep + k] * x[x_off + offsets[o_first + k] + q]

    in reduction order, one ``llvm.fma`` per step.  With ``strided``, the
    input of step ``k`` lies ``k * x_kstep`` on instead (a 1x1 layer's
    channel planes, or a packed panel's runs): the arguments ``offsets,
    o_first`` are replaced by ``x_kstep``, and a step computes its address
    instead of loading it from a table.

    The input is the vector operand (``vl`` consecutive values per load, any
    alignment), the weights the broadcast one, read as given: one row of
    ``count`` per channel, ``w_mstep`` apart (channels ``m >= mc`` read row
    ``mc - 1``; a broadcast costs one load whether the row is packed with
    others or not, and the rows stay in cache over the reduction).  Lanes
    ``q >= valid`` are computed from whatever lies there (the caller keeps
    ``x_off + offsets[.] + vectors*vl`` in bounds) and never stored; channels
    ``m >= mc`` are never stored, and the bias is read only for channels
    ``m < mc`` with ``has_bias != 0``.
    Full vectors are stored whole, a partial tile's vectors each with one
    masked store of its valid lanes (:func:`_masked_store`), which
    replaced a loop of lane extracts: as fast (GoogLeNet's 1x1 reductions
    on 14x14, 7x7 and 28x28 planes, old and new code interleaved call by
    call in one process: medians 0.98-1.02x), and no lane loop.
    3 vectors x 8 channels: 24 accumulators, 3 loads and 8 broadcasts per 24
    FMAs, and 3 prefetches of the input ``PREFETCH_STEPS`` steps ahead, in
    all but the last ``PREFETCH_STEPS`` steps, which run as a loop of their
    own without them.  Against one loop clamping the prefetched step to the
    last (an extra compare and select per step) and reading the table,
    direct-pixels ran ResNet's, MobileNet's and GoogLeNet's 1x1 layers
    1.01-1.08x faster (Intel Xeon, batch 1 and 8 on one thread, batch 1 on
    two; best of two or three alternating processes); prefetching past the
    tile instead (into the next image's planes on a 1x1 layer), MobileNet's
    pw1 (32 channels) ran 3-6 % slower, and prefetching only the first and
    last vector 2-10 % slower.
    With ``copies`` (strided only), three more arguments ``panel, p_off,
    p_kstep``: each step's ``vectors`` input vectors are also stored at
    ``panel[p_off + k*p_kstep:][:vectors*vl]``, for other tiles to read there.
    With ``prefetch_next`` (strided only), each prefetching step also hints
    into L2 the next tile's input of that step (the ``vectors*vl`` pixels
    after this tile's): see ``next_prefetching_pixel_tiles``.
    Arrays are C-contiguous float32 (``offsets`` int64).
    """
    assert strided or not copies, "only the strided tile copies its input"
    assert strided or not prefetch_next, "only the strided tile prefetches the next tile"

    def codegen(context, builder, signature, args):
        w_v, w_off_v, w_mstep_v, x_v, x_off_v = args[:5]
        rest_v = args[5:]
        if strided:
            kstep_v, *rest_v = rest_v
        else:
            offsets_v, o_first_v, *rest_v = rest_v
        if copies:
            *rest_v, panel_v, p_off_v, p_kstep_v = rest_v
            p_ptr = context.make_array(signature.args[-3])(context, builder, panel_v).data
        (count_v, out_v, o_off_v, o_mstep_v, valid_v, mc_v, bias_v, b_off_v, has_bias_v) = rest_v
        at_out = 7 if strided else 8  # the position of out among the arguments
        vty = ir.VectorType(_F32, vl)
        zero = ir.Constant(vty, [0.0] * vl)
        fma = _fma(builder, vty)
        w_ptr, x_ptr, o_ptr, b_ptr = (
            context.make_array(signature.args[k])(context, builder, value).data
            for k, value in ((0, w_v), (3, x_v), (at_out, out_v), (at_out + 5, bias_v)))
        if strided:
            def input_at(k):
                return builder.add(x_off_v, builder.mul(k, kstep_v))
        else:
            t_ptr = context.make_array(signature.args[5])(context, builder, offsets_v).data

            def input_at(k):
                return builder.add(x_off_v, builder.load(_element_ptr(builder, t_ptr, builder.add(o_first_v, k))))
        # Accumulators in allocas: mem2reg keeps them in registers.
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)] for _ in range(channels)]
        last_m = builder.sub(mc_v, _const(1))
        w_rows = [builder.add(w_off_v, builder.mul(builder.select(builder.icmp_signed("<", _const(m), last_m),
                                                                  _const(m), last_m), w_mstep_v))
                  for m in range(channels)]

        def step(k, prefetch):
            at = input_at(k)
            if prefetch:  # the input of step k + PREFETCH_STEPS
                ahead = input_at(builder.add(k, _const(PREFETCH_STEPS)))
                for p in range(vectors):
                    _prefetch(builder, x_ptr, builder.add(ahead, _const(p * vl)))
                    if prefetch_next:
                        _prefetch(builder, x_ptr, builder.add(ahead, _const((vectors + p) * vl)), locality=2)
            inputs = [_load_vector(builder, x_ptr, builder.add(at, _const(p * vl)), vty) for p in range(vectors)]
            if copies:  # the step's input, into the panel the next channel blocks read
                to = builder.add(p_off_v, builder.mul(k, p_kstep_v))
                for p in range(vectors):
                    _store_vector(builder, inputs[p], p_ptr, builder.add(to, _const(p * vl)))
            for m in range(channels):
                weight = _splat(builder, builder.load(_element_ptr(builder, w_ptr, builder.add(w_rows[m], k))), vty)
                for p in range(vectors):
                    builder.store(builder.call(fma, [inputs[p], weight, builder.load(accs[m][p])]), accs[m][p])

        prefetching = builder.sub(count_v, _const(PREFETCH_STEPS))
        prefetching = builder.select(builder.icmp_signed(">", prefetching, _const(0)), prefetching, _const(0))
        with cgutils.for_range(builder, prefetching) as loop:
            step(loop.index, True)
        with cgutils.for_range_slice(builder, prefetching, count_v, _const(1)) as (k, _):
            step(k, False)
        bias_on = builder.icmp_signed("!=", has_bias_v, _const(0))
        full = builder.icmp_signed("==", valid_v, _const(vectors * vl))
        for m in range(channels):
            with builder.if_then(builder.icmp_signed("<", _const(m), mc_v)):
                row = builder.add(o_off_v, builder.mul(_const(m), o_mstep_v))
                with builder.if_then(bias_on):  # the bias is read only when there is one
                    b = _splat(builder, builder.load(_element_ptr(builder, b_ptr, builder.add(b_off_v, _const(m)))),
                               vty)
                    for p in range(vectors):
                        builder.store(builder.fadd(builder.load(accs[m][p]), b), accs[m][p])
                sums = [builder.load(accs[m][p]) for p in range(vectors)]
                with builder.if_else(full) as (whole, partial):
                    with whole:
                        for p in range(vectors):
                            _store_vector(builder, sums[p], o_ptr, builder.add(row, _const(p * vl)))
                    with partial:
                        for p in range(vectors):
                            _masked_store(builder, sums[p], o_ptr, builder.add(row, _const(p * vl)),
                                          _first_lanes(builder, builder.sub(valid_v, _const(p * vl)), vl))
        return context.get_dummy_value()

    def typed(w, x, out, bias, step_args, tables_ok, panel_args=()):
        if not (all(_is_f32_array(a) for a in (w, x, out, bias, *panel_args[:1])) and tables_ok):
            return None
        i64 = types.int64
        return types.void(w, i64, i64, x, i64, *step_args, i64, out, i64, i64, i64, i64, bias, i64, i64,
                          *panel_args), codegen

    if copies:
        def pixel_tile(typingctx, w, w_off, w_mstep, x, x_off, x_kstep, count, out, o_off, o_mstep, valid, mc,
                       bias, b_off, has_bias, panel, p_off, p_kstep):
            return typed(w, x, out, bias, (types.int64,), True, (panel, types.int64, types.int64))
    elif strided:
        def pixel_tile(typingctx, w, w_off, w_mstep, x, x_off, x_kstep, count, out, o_off, o_mstep, valid, mc,
                       bias, b_off, has_bias):
            return typed(w, x, out, bias, (types.int64,), True)
    else:
        def pixel_tile(typingctx, w, w_off, w_mstep, x, x_off, offsets, o_first, count, out, o_off, o_mstep,
                       valid, mc, bias, b_off, has_bias):
            return typed(w, x, out, bias, (offsets, types.int64), _is_i64_array(offsets))

    pixel_tile.__name__ = (f"pixel_tile_{vectors}x{vl}x{channels}" + ("_strided" if strided else "")
                           + ("_copying" if copies else "") + ("_prefetching_next" if prefetch_next else ""))
    return intrinsic(pixel_tile)


#: The full tile and the small remainder tile for this host, and both at half
#: width (one vector, ``VL`` channels) for channel blocks of at most ``VL``
#: channels: with M/g = 16 a full-width tile wastes half its FMAs, and the
#: half-width one ran 1x1 layers with M = 16 about 1.8x faster (12 FMAs per
#: vector load and 12 broadcasts still keep both FMA pipes busy).
tile_full = make_tile_kernel(MR)
tile_small = make_tile_kernel(SMALL_MR)
tile_half = make_tile_kernel(MR, nv=1)
tile_small_half = make_tile_kernel(SMALL_MR, nv=1)
#: The wide tile and its small remainder tile: a full block and the half block
#: after it in one tile, ``NR + VL`` channels (see ``WIDE_MR``).
tile_wide = make_tile_kernel(WIDE_MR, nv=NV + 1)
tile_small_wide = make_tile_kernel(SMALL_MR, nv=NV + 1)

#: Transposes a ``VL x VL`` block (weight packing, channel-block layouts).
transpose_block = make_transpose_kernel()
#: Stores ``VL`` pixels of a row of Winograd output tiles of 2 and 4 pixels
#: as channel vectors (NCHW output).
tile_row_transpose_2 = make_tile_row_transpose_kernel(2)
tile_row_transpose_4 = make_tile_row_transpose_kernel(4)

#: Output pixels per depthwise call: 8 independent FMA chains cover the FMA
#: latency (4 cycles x 2 pipes on Zen 4), and nine weight vectors loaded once
#: serve 72 taps (9 + 8 of 32 zmm registers).
DEPTHWISE_PIXELS = 8
DEPTHWISE_TAPS = 9
depthwise_pixels = make_depthwise_kernel(DEPTHWISE_PIXELS, DEPTHWISE_TAPS)
#: 3x3 kernels with dilation 1 at stride 1 and 2 (MobileNet's), loading each
#: input column once for the pixels that share it.
depthwise_rows_s1 = make_depthwise_row_kernel(DEPTHWISE_PIXELS, 1)
depthwise_rows_s2 = make_depthwise_row_kernel(DEPTHWISE_PIXELS, 2)

#: Pixel-lane tiles (NCHW direct convolution, lanes along an output row):
#: ``PIXEL_CHANNELS`` output channels by 1 to ``PIXEL_VECTORS`` vectors of
#: ``VL`` pixels (the narrower ones for the end of a row).
#: AVX-512 keeps 3 x 8 accumulators in its 32 registers; AVX2's 16 hold 3 x 4
#: beside the three input vectors and a broadcast weight.  3 x 8 spilled: on
#: the AMD Zen 3 kind, one thread, ResNet-50's and GoogLeNet's 1x1 layers on
#: 56x56 to 7x7 planes ran at 29-41 GFLOP/s, and at 66-88 with 4 channels.
PIXEL_VECTORS = 3
PIXEL_CHANNELS = 8 if ISA == "avx512" else 4
pixel_tiles = tuple(make_pixel_tile_kernel(v, PIXEL_CHANNELS) for v in range(1, PIXEL_VECTORS + 1))
strided_pixel_tiles = tuple(make_pixel_tile_kernel(v, PIXEL_CHANNELS, strided=True)
                            for v in range(1, PIXEL_VECTORS + 1))
#: The strided tiles that also copy each step's input vectors into a panel.
copying_pixel_tiles = tuple(make_pixel_tile_kernel(v, PIXEL_CHANNELS, strided=True, copies=True)
                            for v in range(1, PIXEL_VECTORS + 1))
#: The strided tiles that also hint the next tile's input into L2, for the
#: first channel block of a run of 1x1 tiles read in place, whose input is
#: not in cache yet (the other blocks find it in L2): one tile ahead instead of
#: ``PREFETCH_STEPS`` steps, as far as the L3 needs.  On the Intel Xeon kind,
#: one thread, tile sweeps as ``direct-pixels`` runs them (runs, every
#: channel block over each): at batch 8, 1x1 layers of 64-512 channels on
#: 56x56 and 28x28 planes 1.04-1.13x faster (ResNet-50's 256->64 on 56x56
#: 1.13x, 128->128 1.10x), MobileNet's pw1 / pw2 0.99 / 1.01x; at batch 1
#: 0.99-1.02x.  Every block prefetching so, batch 1 ran 4-7 % slower.
next_prefetching_pixel_tiles = tuple(make_pixel_tile_kernel(v, PIXEL_CHANNELS, strided=True, prefetch_next=True)
                                     for v in range(1, PIXEL_VECTORS + 1))
