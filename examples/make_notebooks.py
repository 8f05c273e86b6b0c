"""Write the example notebooks from the cell sources in this file.

The notebooks are generated so that their code can be reviewed here as plain
Python text, and so that they are always stored without outputs.  After
editing a cell, regenerate them (the test suite checks they are up to date):

    python examples/make_notebooks.py            # write examples/*.ipynb
    python examples/make_notebooks.py --check    # exit 1 if a stored notebook differs
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent


def markdown(text):
    """A markdown cell."""
    return ("markdown", text)


def code(text):
    """A code cell."""
    return ("code", text)


ALGORITHMS = [
markdown(r'''
# The algorithms, on a small input

lowmem-numba implements the GEMM-based convolution algorithms of Anderson, Vasudevan, Keane and Gregg
([arXiv 1709.03395](https://arxiv.org/abs/1709.03395)). They all do the same arithmetic,
$2 M C K^2 H_o W_o$ flops as matrix multiplications (GEMMs); they differ in how they arrange the data
for the GEMM, and so in the temporary memory (*workspace*) they need: from $K^2$ times the input down to
a few rows.

This notebook draws what each family builds, on an input small enough to look at. Every construction is
computed here with numpy and checked against a plain numpy reference convolution, and every result the
library computes is asserted to match that reference, so a broken algorithm makes the notebook fail (the
test suite runs it).

Notation: input $C \times H \times W$, kernels $M \times C \times K \times K$, output
$M \times H_o \times W_o$. Stride 1 and "same" padding ($H_o = H$, $W_o = W$) unless said otherwise.
'''),
code(r'''
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

import lowmem_numba as ln
import lowmem_numba.bench

C, H, W = 2, 5, 6  # input channels, height, width (H != W keeps the pictures unambiguous)
M, K = 3, 3        # output channels, kernel size
PAD = 1            # "same" padding for a 3 x 3 kernel
Ho, Wo = H + 2 * PAD - K + 1, W + 2 * PAD - K + 1
FLOAT32 = np.dtype(np.float32).itemsize

# Small integers keep every product and sum exact in float32, whatever order
# BLAS adds them in, so the numpy constructions below compare exactly.
rng = np.random.default_rng(7)
x = rng.integers(-3, 4, size=(C, H, W)).astype(np.float32)
w = rng.integers(-2, 3, size=(M, C, K, K)).astype(np.float32)


def reference_conv2d(x, w, stride=1, pad=0):
    """Cross-correlation of one CHW image: explicit zero padding, a loop over taps, float64."""
    _, h, wd = x.shape
    kh, kw = w.shape[2:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((w.shape[0], ho, wo))
    for i in range(kh):
        for j in range(kw):
            window = xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            out += np.einsum("mc,chw->mhw", w[:, :, i, j], window)
    return out


y_ref = reference_conv2d(x, w, pad=PAD)
print(f"x {x.shape}, w {w.shape} -> y {y_ref.shape}")
'''),
code(r'''
PADDING_GREY = "0.55"


def show_matrix(ax, a, title, xlabel, ylabel, annotate=False):
    """Draw a matrix on a symmetric colour scale; NaN entries (zero padding) in grey."""
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad=PADDING_GREY)
    limit = np.nanmax(np.abs(a)) or 1.0
    ax.imshow(a, cmap=cmap, vmin=-limit, vmax=limit)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if annotate:
        for (r, c), v in np.ndenumerate(a):
            if not np.isnan(v):
                ax.text(c, r, f"{v:g}", ha="center", va="center", fontsize=8)


# The input with its zero padding marked as NaN, so that pictures show padding in grey.
x_marked = np.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD)), constant_values=np.nan)
fig, axes = plt.subplots(1, C, figsize=(4 * C, 3.4))
for c, ax in enumerate(axes):
    show_matrix(ax, x_marked[c], f"input channel {c} (padding grey)", "x (pixel, padded)", "y (pixel, padded)",
                annotate=True)
fig.suptitle(f"The input: C x H x W = {C} x {H} x {W}, padded by {PAD}")
fig.tight_layout()
'''),
markdown(r'''
## im2col: the patch matrix

The patch matrix has one column per output pixel and one row per (channel $c$, kernel tap $(i, j)$):
entry $((c, i, j), (y_o, x_o))$ is the input pixel that tap sees at that output pixel, or zero padding.
The whole convolution is then ONE GEMM, weights $(M \times C K^2)$ times patches
$(C K^2 \times H_o W_o)$. The price is the patch matrix itself: every input pixel is copied up to $K^2$
times, a workspace of $C K^2 H_o W_o$ values.
'''),
code(r'''
def im2col(x, k, pad, fill=0.0):
    """Patch matrix (C*k*k) x (Ho*Wo); row (c, i, j) is what tap (i, j) of channel c sees at each output pixel."""
    c_count, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    return np.stack([xp[c, i:i + ho, j:j + wo].reshape(-1)
                     for c in range(c_count) for i in range(k) for j in range(k)])


patches = im2col(x, K, PAD)
assert np.array_equal(w.reshape(M, -1) @ patches, y_ref.reshape(M, -1))

# Laid out as the GEMM: the patch matrix above the output, the weights left of it.
fig, axes = plt.subplots(2, 2, figsize=(11, 7), gridspec_kw={"width_ratios": [C * K * K, Ho * Wo],
                                                               "height_ratios": [C * K * K, M]})
axes[0, 0].axis("off")
axes[0, 0].text(0.5, 0.5, "output = weights @ patches\n\none GEMM:\n(M x C·K²) by (C·K² x Ho·Wo)",
                ha="center", va="center", fontsize=12)
show_matrix(axes[0, 1], im2col(x, K, PAD, fill=np.nan), "patch matrix (C·K² x Ho·Wo); grey = zero padding",
            "column = output pixel yo·Wo + xo", "row (c, i, j)")
axes[0, 1].set_yticks(range(C * K * K), [f"c{c} ({i},{j})" for c in range(C) for i in range(K) for j in range(K)],
                      fontsize=7)
show_matrix(axes[1, 0], w.reshape(M, -1), "weights (M x C·K²)", "column (c, i, j)", "output channel m")
show_matrix(axes[1, 1], y_ref.reshape(M, -1), "output (M x Ho·Wo)", "column = output pixel yo·Wo + xo",
            "output channel m")
fig.suptitle("im2col")
fig.tight_layout()
'''),
markdown(r'''
The library's `im2col-copy-short-ab-ki` builds exactly this matrix. A call given a `Workspace` carves its
scratch from it, so after the call the arena still holds the patch matrix of the (last) image, and its size
is what `workspace_bytes` stated before the call:
'''),
code(r'''
name = "im2col-copy-short-ab-ki"
arena = ln.Workspace()
y = ln.conv2d(x, w, padding=PAD, algorithm=name, workspace=arena)
assert np.allclose(y, y_ref)
nbytes = ln.workspace_bytes(name, x.shape, w.shape, padding=PAD)
assert nbytes == patches.nbytes
with arena.lease(nbytes // FLOAT32) as scratch:
    assert np.array_equal(scratch.reshape(patches.shape), patches)
print(f"{name}: workspace {nbytes} B = C·K²·Ho·Wo floats, {patches.size / x.size:.1f}x the input")
'''),
markdown(r'''
`im2col-copy-self-ab-ki` builds the same matrix with fewer reads of the input: at stride 1, row
$(c, i, j)$ is row $(c, i-1, j)$ moved one output row ($W_o$ columns) to the left, so only its last output
row has to come from the input.
'''),
code(r'''
def patch_row(c, i, j):
    return (c * K + i) * K + j


for c in range(C):
    for i in range(1, K):
        for j in range(K):
            assert np.array_equal(patches[patch_row(c, i, j), :-Wo], patches[patch_row(c, i - 1, j), Wo:])
y = ln.conv2d(x, w, padding=PAD, algorithm="im2col-copy-self-ab-ki")
assert np.allclose(y, y_ref)
'''),
markdown(r'''
## im2row: the transposed patch matrix

im2row builds the transpose, $(H_o W_o) \times (K^2 C)$, from channels-last (HWC) input, with columns in
$(i, j, c)$ order. A row of it is then $K$ contiguous runs of $K C$ values of the (padded) HWC image,
which makes it cheap to build. The GEMM is patches $\times$ weights and gives an HWC output (`ab-ik`),
or, with the operands swapped and transposed, a CHW one (`abt-ki`). Same workspace order as im2col.
'''),
code(r'''
x_hwc = np.ascontiguousarray(x.transpose(1, 2, 0))
xp_hwc = np.pad(x_hwc, ((PAD, PAD), (PAD, PAD), (0, 0)))
rows = np.stack([xp_hwc[yo:yo + K, xo:xo + K, :].reshape(-1) for yo in range(Ho) for xo in range(Wo)])
# The same entries as the patch matrix, transposed, with columns reordered (c, i, j) -> (i, j, c).
assert np.array_equal(rows, patches.reshape(C, K, K, -1).transpose(3, 1, 2, 0).reshape(Ho * Wo, -1))
y_hwc_ref = y_ref.transpose(1, 2, 0)
assert np.array_equal(rows @ w.transpose(2, 3, 1, 0).reshape(-1, M), y_hwc_ref.reshape(Ho * Wo, M))

for name in ln.algorithms():
    if ln.describe(name).family == "im2row":
        y = ln.conv2d(x_hwc, w, padding=PAD, algorithm=name, layout="NHWC")
        assert np.allclose(y, y_hwc_ref), name
        print(f"{name}: OK")
'''),
markdown(r'''
## MEC: lower along the width only

MEC (Cho and Brand, ICML 2017, [arXiv 1706.06873](https://arxiv.org/abs/1706.06873)) copies each input
pixel $K$ times instead of $K^2$. It lowers along one dimension only: row $x_o$ of the lowered matrix $L$
holds the $K$-wide column window of the input that output column $x_o$ sees, over **all** input rows and
channels, stored row by row in $(y, j, c)$ order (channels-last, as in the paper). $L$ is
$W_o \times (H \cdot K \cdot C)$.

Output row $y_o$ needs input rows $y_o - p \ldots y_o - p + K - 1$ of every window, and in $L$ those are
ONE contiguous block of columns. So output row $y_o$ is one GEMM, a window of $L$ (described to BLAS
by an offset and the leading dimension $H K C$, nothing copied) times the weights in $(i, j, c)$ order.
The windows of neighbouring output rows overlap, which is where the saving over im2col comes from.

The paper stores the padded height $H_p$; like the library (`lowmem_numba/algorithms/mec.py`), the picture
stores only the $H$ real rows, and border output rows use a shorter window with the matching kernel rows.
'''),
code(r'''
def mec_lower(x_hwc, k, pad, fill=0.0):
    """MEC's lowered matrix, Wo x (H*k*C): row xo is the k-wide column window at xo - pad, (y, j, c) order."""
    h, wd, c_count = x_hwc.shape
    xp = np.pad(x_hwc, ((0, 0), (pad, pad), (0, 0)), constant_values=fill)  # horizontal padding only
    return np.stack([xp[:, xo:xo + k, :].reshape(-1) for xo in range(wd + 2 * pad - k + 1)])


def mec_window(yo, k, pad, h):
    """Kernel rows [i0, i1) of output row yo that fall inside the image."""
    return max(0, pad - yo), min(k, h + pad - yo)


KC = K * C
L = mec_lower(x_hwc, K, PAD)
w_mec = w.transpose(2, 3, 1, 0).reshape(K * KC, M)  # rows in (i, j, c) order, like a window of L
y_mec = np.empty((Ho, Wo, M), np.float32)
for yo in range(Ho):
    i0, i1 = mec_window(yo, K, PAD, H)
    first = (yo - PAD + i0) * KC
    window = L[:, first:first + (i1 - i0) * KC]  # a view of L: offset + leading dimension, no copy
    assert np.shares_memory(window, L)
    y_mec[yo] = window @ w_mec[i0 * KC:i1 * KC]
assert np.array_equal(y_mec, y_hwc_ref)
print(f"lowered matrix {L.shape}: {L.size} values; "
      f"im2col's patch matrix: {patches.size} ({patches.size / L.size:.1f}x)")
'''),
code(r'''
fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 5.2), sharex=True, gridspec_kw={"height_ratios": [Wo, Ho]})
show_matrix(top, mec_lower(x_hwc, K, PAD, fill=np.nan), "MEC lowered matrix L (Wo x H·K·C); grey = zero padding",
            "", "output column xo")
top.set_aspect("auto")
for y_in in range(1, H):
    top.axvline(y_in * KC - 0.5, color="k", lw=1)
input_rows = top.secondary_xaxis("top")
input_rows.set_xticks([y_in * KC + KC / 2 - 0.5 for y_in in range(H)], [f"input row y={y_in}" for y_in in range(H)])
for yo in range(Ho):
    i0, i1 = mec_window(yo, K, PAD, H)
    first = (yo - PAD + i0) * KC
    bottom.add_patch(Rectangle((first - 0.5, yo - 0.35), (i1 - i0) * KC, 0.7, color=f"C{yo}", alpha=0.7))
    bottom.text(first + (i1 - i0) * KC / 2, yo, f"kernel rows {i0}..{i1 - 1}", ha="center", va="center", fontsize=8)
bottom.set(ylim=(Ho - 0.5, -0.5), xlabel="column of L: (y·K + j)·C + c", ylabel="output row yo",
           title="the window of L each output row's GEMM reads (overlapping; shorter at the borders)")
fig.tight_layout()
'''),
markdown(r'''
The library's MEC algorithms read and write channels-last data, so they are called with `layout="NHWC"`
here (any algorithm accepts either layout; the other one costs a conversion buffer):
'''),
code(r'''
mec_names = [name for name in ln.algorithms() if ln.describe(name).family == "mec"]
for name in mec_names:
    y = ln.conv2d(x_hwc, w, padding=PAD, algorithm=name, layout="NHWC")
    assert np.allclose(y, y_hwc_ref), name
    nbytes = ln.workspace_bytes(name, x_hwc.shape, w.shape, padding=PAD, layout="NHWC")
    assert nbytes == L.nbytes + w.nbytes  # L and the weights repacked in (i, j, c) order
    print(f"{name}: OK, workspace {nbytes} B = L {L.nbytes} B + repacked weights {w.nbytes} B")
print("library MEC algorithms:", ", ".join(mec_names) or "none registered in this build")
'''),
markdown(r'''
## kn2row: $K^2$ partial planes from one GEMM

A $K \times K$ convolution is a sum of $K^2$ 1x1 convolutions, one per tap, each shifted by the tap's
offset $(d_y, d_x) = (i - p, j - p)$:
$$\mathrm{out}[m, y, x] = \sum_{i,j} P_{ij}[m, y + d_y, x + d_x], \qquad
P_{ij} = W[:, :, i, j] \cdot X \quad (M \times C \text{ by } C \times HW).$$
kn2row stacks the $K^2$ tap matrices into one $(K^2 M) \times C$ matrix and computes every partial plane
with ONE GEMM by the input as it is (no patch matrix); then it shift-adds the planes into the output,
dropping what a shift moves outside the image (that is the zero padding). Workspace: the $K^2$ planes,
$K^2 M H W$ values, as much as im2col's patch matrix when $M = C$.
'''),
code(r'''
taps = [(i, j) for i in range(K) for j in range(K)]
packed = np.concatenate([w[:, :, i, j] for i, j in taps])          # (K*K*M) x C, tap-major
partial = (packed @ x.reshape(C, H * W)).reshape(K * K, M, H, W)   # ONE GEMM: every tap's 1x1 convolution


def shifted(d, n):
    """(destination, source) ranges along an axis of length n where output o reads input o + d."""
    return slice(max(0, -d), min(n, n - d)), slice(max(0, d), min(n, n + d))


y_kn2row = np.zeros((M, H, W))
for t, (i, j) in enumerate(taps):
    (to_y, from_y), (to_x, from_x) = shifted(i - PAD, H), shifted(j - PAD, W)
    y_kn2row[:, to_y, to_x] += partial[t][:, from_y, from_x]
assert np.array_equal(y_kn2row, y_ref)

# The library's kn2row leaves its packed weights and partial planes in the arena.
arena = ln.Workspace()
y = ln.conv2d(x, w, padding=PAD, algorithm="kn2row", workspace=arena)
assert np.allclose(y, y_ref)
nbytes = ln.workspace_bytes("kn2row", x.shape, w.shape, padding=PAD)
assert nbytes == packed.nbytes + partial.nbytes
with arena.lease(nbytes // FLOAT32) as scratch:
    assert np.array_equal(scratch[:packed.size], packed.reshape(-1))
    assert np.array_equal(scratch[packed.size:].reshape(partial.shape), partial)
print(f"kn2row: workspace {nbytes} B = packed weights {packed.nbytes} B "
      f"+ K²·M·H·W partial planes {partial.nbytes} B")
'''),
code(r'''
m = 0
fig, axes = plt.subplots(K, K + 1, figsize=(13, 7.5))
for t, (i, j) in enumerate(taps):
    ax = axes[i, j]
    show_matrix(ax, partial[t, m], f"P({i},{j})[m={m}]: dy={i - PAD:+d}, dx={j - PAD:+d}", "x (pixel)", "y (pixel)")
    (_, from_y), (_, from_x) = shifted(i - PAD, H), shifted(j - PAD, W)
    ax.add_patch(Rectangle((from_x.start - 0.5, from_y.start - 0.5), from_x.stop - from_x.start,
                           from_y.stop - from_y.start, fill=False, ec="k", lw=2))
for ax in axes[:, K]:
    ax.axis("off")
show_matrix(axes[1, K], y_ref[m], f"output channel m={m}\n= sum of the boxed regions", "x (pixel)", "y (pixel)")
axes[1, K].axis("on")
fig.suptitle("kn2row: the K² partial planes of one GEMM; the box is the part shifted into the output")
fig.tight_layout()
'''),
markdown(r'''
`kn2row-as` (accumulate, single buffer) runs the $K^2$ GEMMs one tap at a time into ONE reused
$M \times HW$ plane and shift-adds after each: workspace $M H W$ (plus the packed weights). `kn2col` and
`kn2col-as` are the channels-last (column) arrangement of the same two.
'''),
code(r'''
nbytes = ln.workspace_bytes("kn2row-as", x.shape, w.shape, padding=PAD)
assert nbytes == packed.nbytes + M * H * W * FLOAT32
assert np.allclose(ln.conv2d(x, w, padding=PAD, algorithm="kn2row-as"), y_ref)
print(f"kn2row-as: workspace {nbytes} B = packed weights {packed.nbytes} B + one M·H·W plane")
'''),
markdown(r'''
## kn2row-aa: accumulate straight into the output

kn2row-aa needs no partial plane at all. Flatten every channel plane ($p = yW + x$). For tap $(i, j)$,
output pixel $p$ reads input pixel $p + d_y W + d_x$, so over a contiguous range of output pixels the
tap is ONE GEMM whose B operand is the input at a flat offset, accumulated into the output
($\beta = 1$):
$$\mathrm{out}[:, p_0{:}p_1] \mathrel{+}= W[:, :, i, j] \cdot X[:, p_0 + d_y W + d_x \,:\, p_1 + d_y W + d_x].$$
Two things go wrong at the borders, and both are repaired without any big buffer:

* **vertical**: rows whose source row is outside the image would read another channel's plane; the range
  $[p_0, p_1)$ is clipped to the rows whose source row exists.
* **horizontal**: with $d_x \ne 0$ the $|d_x|$ edge pixels of a row read the far end of the neighbouring
  row, where the padding should give zero. Their true contribution from this tap *is* zero, so their
  output values are **saved before the GEMM and restored after it**. That save buffer is the only scratch
  (besides the weights repacked per tap), and since nothing is subtracted, NaN or inf in the input cannot
  leak into outputs outside its receptive field.

Below, the same algorithm in numpy, with a map of what each tap does to each output pixel.
'''),
code(r'''
UNTOUCHED, ACCUMULATED, RESTORED = 0, 1, 2


def kn2row_aa(x, w, pad, restore=True):
    """kn2row-aa in numpy on flat CHW planes ("same" size, stride 1).

    Returns the output and, per tap, the role of every output pixel: UNTOUCHED (outside the
    clipped GEMM range), ACCUMULATED, or RESTORED (in the range, but saved and restored).
    """
    c_count, h, wd = x.shape
    m_count, _, k, _ = w.shape
    flat_x = x.reshape(c_count, h * wd)
    out = np.zeros((m_count, h * wd), np.float32)
    roles = np.full((k, k, h * wd), UNTOUCHED)
    for i in range(k):
        dy = i - pad
        r0, r1 = max(0, -dy), min(h, h - dy)  # output rows whose source row exists
        for j in range(k):
            dx = j - pad
            p0, p1 = r0 * wd + max(0, -dx), (r1 - 1) * wd + wd - max(0, dx)
            if dx > 0:  # right edges of all but the last row read the next row's start
                wrapped = [y * wd + col for y in range(r0, r1 - 1) for col in range(wd - dx, wd)]
            else:       # left edges of all but the first row read the previous row's end
                wrapped = [y * wd + col for y in range(r0 + 1, r1) for col in range(-dx)]
            saved = out[:, wrapped].copy()
            offset = dy * wd + dx
            out[:, p0:p1] += w[:, :, i, j] @ flat_x[:, p0 + offset:p1 + offset]  # ONE GEMM, beta = 1
            if restore:
                out[:, wrapped] = saved
            roles[i, j, p0:p1] = ACCUMULATED
            roles[i, j, wrapped] = RESTORED
    return out.reshape(m_count, h, wd), roles.reshape(k, k, h, wd)


y_aa, roles = kn2row_aa(x, w, PAD)
assert np.array_equal(y_aa, y_ref)

# Without the save/restore, the output is wrong exactly at (some of) the restored pixels.
error = kn2row_aa(x, w, PAD, restore=False)[0] - y_ref
restored_anywhere = (roles == RESTORED).any(axis=(0, 1))
assert error.any() and not error[:, ~restored_anywhere].any()
'''),
code(r'''
role_colours = ListedColormap(["white", "#9ecae1", "#d62728"])
fig, axes = plt.subplots(K, K + 1, figsize=(13, 7.5))
for i in range(K):
    for j in range(K):
        ax = axes[i, j]
        ax.imshow(roles[i, j], cmap=role_colours, vmin=0, vmax=2)
        ax.set(title=f"tap ({i},{j}): dy={i - PAD:+d}, dx={j - PAD:+d}", xlabel="x (output pixel)",
               ylabel="y (output pixel)")
        ax.set_xticks(np.arange(-0.5, W), minor=True)
        ax.set_yticks(np.arange(-0.5, H), minor=True)
        ax.grid(which="minor", color="0.6", lw=0.5)
for ax in axes[:, K]:
    ax.axis("off")
axes[1, K].axis("on")
shown = axes[1, K].imshow(np.abs(error).sum(axis=0), cmap="Reds")
axes[1, K].set(title="|error| summed over m\nwithout save/restore", xlabel="x (output pixel)",
               ylabel="y (output pixel)")
fig.colorbar(shown, ax=axes[1, K], shrink=0.8)
fig.legend(handles=[Patch(fc="white", ec="0.6", label="not written (clipped rows, range ends)"),
                    Patch(color="#9ecae1", label="accumulated by the tap's GEMM"),
                    Patch(color="#d62728", label="read the wrong row: saved and restored")],
           loc="lower right", ncol=3)
fig.suptitle("kn2row-aa: where each tap's flat-offset GEMM writes, and its border corrections")
fig.tight_layout(rect=(0, 0.05, 1, 1))
'''),
markdown(r'''
The save buffer holds one tap's restored pixels (at most $|d_x| (\text{rows} - 1)$ per output channel)
and is reused by every tap. The library cuts the output into row bands (one band on a single thread at
this size) and gives each thread its own buffer, so its workspace is
$M C K^2$ (weights packed per tap) $+\ \text{threads} \cdot M \cdot \max|d_x| \cdot (\text{band rows} - 1)$:
'''),
code(r'''
widest = max(abs(j - PAD) for j in range(K))
assert (roles == RESTORED).sum(axis=(2, 3)).max() == widest * (H - 1)
nbytes = ln.workspace_bytes("kn2row-aa-ab", x.shape, w.shape, padding=PAD, threads=1)
assert nbytes == (M * C * K * K + M * widest * (H - 1)) * FLOAT32
print(f"kn2row-aa-ab on 1 thread: workspace {nbytes} B, of which {M * widest * (H - 1) * FLOAT32} B save buffer")

for name in ("kn2row-aa-ab", "kn2row-aa-atb"):
    assert np.allclose(ln.conv2d(x, w, padding=PAD, algorithm=name), y_ref), name
for name in ("kn2row-aa-abt", "kn2row-aa-atbt"):  # the channels-last variants
    assert np.allclose(ln.conv2d(x_hwc, w, padding=PAD, algorithm=name, layout="NHWC"), y_hwc_ref), name

# Nothing is subtracted, so a NaN reaches exactly the outputs whose receptive field holds it.
x_nan = x.copy()
x_nan[1, 2, 0] = np.nan
y = ln.conv2d(x_nan, w, padding=PAD, algorithm="kn2row-aa-ab")
assert np.array_equal(np.isnan(y), np.isnan(reference_conv2d(x_nan, w, pad=PAD)))
print("NaN at input (c=1, y=2, x=0) reaches", int(np.isnan(y[0]).sum()), "pixels of each output channel")
'''),
markdown(r'''
## Every algorithm, checked

`direct-sum2d` is the plain loop nest (no GEMM, no workspace), the baseline. Last, every registered
algorithm runs on a few configurations it supports, in NCHW (algorithms whose kernels are channels-last
convert through a buffer), and is compared with the reference:
'''),
code(r'''
CONFIGS = {"3x3": ((M, C, 3, 3), 1, 1), "1x1": ((M, C, 1, 1), 1, 0),  # (w shape, stride, padding)
           "3x3/s2": ((M, C, 3, 3), 2, 1), "5x5 valid": ((M, C, 5, 5), 1, 0),
           "3x3 dw": ((C, 1, 3, 3), 1, 1)}  # depthwise: groups = C, one channel each
print("checked on: 3x3 = 3x3 pad 1; 1x1; 3x3/s2 = 3x3 stride 2 pad 1; 5x5 valid = 5x5 no padding;")
print("            3x3 dw = depthwise 3x3 pad 1 (groups = C)")
print("(Winograd rounds differently: compared to within 1e-4 on these integers)")
print("workspace: bytes, for the 3x3 pad 1 example above called in NCHW (channels-last algorithms")
print("include the buffers that convert the input and output)\n")
print(f"{'algorithm':<26} {'family':<14} {'workspace':>9}  {'checked on':<28} workspace formula (elements)")
for name in ln.algorithms():
    checked = []
    for label, (w_shape, stride, pad) in CONFIGS.items():
        groups = C // w_shape[1]
        if ln.supports(name, x.shape, w_shape, stride=stride, padding=pad, groups=groups):
            w_config = rng.integers(-2, 3, size=w_shape).astype(np.float32)
            y = ln.conv2d(x, w_config, stride=stride, padding=pad, groups=groups, algorithm=name)
            expected = (np.concatenate([reference_conv2d(x[g:g + 1], w_config[g:g + 1], stride, pad)
                                        for g in range(C)]) if groups > 1
                        else reference_conv2d(x, w_config, stride, pad))
            assert np.allclose(y, expected, rtol=0, atol=1e-4), (name, label)
            checked.append(label)
    assert checked, f"{name} supports none of the configurations"
    algorithm = ln.describe(name)
    space = ln.workspace_bytes(name, x.shape, (M, C, 3, 3), padding=1) if "3x3" in checked else "-"
    print(f"{name:<26} {algorithm.family:<14} {space:>9}  {', '.join(checked):<28} {algorithm.workspace_formula}")
'''),
]


MEMORY_VS_SPEED = [
markdown(r'''
# Memory against speed, layer by layer

For a few layers of a real network, every algorithm's time per call against its workspace, and how each
scales with threads. The GoogLeNet layers below are small so that the notebook runs in seconds; edit
`LAYER_NAMES` (any names from `ln.bench.layers(NETWORK)`, or another network) and `REPEATS` for a fuller picture.

**How it is timed.** Each algorithm runs in its own input layout (so no layout conversion is timed or
counted, as in `perf/family_speed.py`), into a preallocated output, after one untimed call (which also
loads or compiles its kernels). The time is the best of `REPEATS` calls measured in this process with
`lowmem_numba.measure`. pyperf, which the benchmark suite in `perf/` uses for publishable figures,
cannot run here: its `Runner` spawns worker processes and parses the command line, which does not work
inside IPython. A few repeats on a shared machine are noisy: read the figures for their shape (orders
of magnitude in memory, factors in time), not for the last digit.
'''),
code(r'''
import matplotlib.pyplot as plt
import numba
import numpy as np

import lowmem_numba as ln
import lowmem_numba.bench

NETWORK = "googlenet"
LAYER_NAMES = ("inception3a_5x5", "inception4a_1x1", "inception4a_3x3", "inception5a_3x3")
SCALING_LAYER = "inception4a_3x3"  # the layer of the thread-scaling curves
REPEATS = 3                        # timed calls per point; the best is kept
MAX_THREADS = numba.config.NUMBA_NUM_THREADS

chosen = [layer for layer in ln.bench.layers(NETWORK) if layer.name in LAYER_NAMES]
NAMES = ln.algorithms()


def algorithm_styles(names):
    """Marker style per algorithm: one colour per family, one marker per variant within it."""
    families = list(dict.fromkeys(ln.describe(name).family for name in names))
    seen = {family: 0 for family in families}
    styles = {}
    for name in names:
        family = ln.describe(name).family
        styles[name] = dict(color=plt.get_cmap("tab10")(families.index(family) % 10),
                            marker="osD^vP*Xhp<>"[seen[family] % 12])
        seen[family] += 1
    return styles


STYLES = algorithm_styles(NAMES)


def make_inputs(layer):
    """Random input in both layouts, and weights, for one layer (batch 1)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(layer.x_shape(), dtype=np.float32)
    w = rng.standard_normal(layer.w_shape, dtype=np.float32)
    return {"NCHW": x, "NHWC": np.ascontiguousarray(x.transpose(0, 2, 3, 1))}, w


def best_seconds(layer, name, threads, inputs, w):
    """Best time of one call of an algorithm in its own input layout."""
    layout = ln.describe(name).input_layout
    x = inputs[layout]
    args = dict(algorithm=name, threads=threads, layout=layout, **layer.conv_args)
    out = ln.conv2d(x, w, **args)  # also the warm-up
    return ln.bench.measure(lambda: ln.conv2d(x, w, out=out, **args), repeats=REPEATS, warmup=0).best


def workspaces(layer, name, threads, inputs, w):
    """(conv2d workspace, Conv2d layer workspace) in bytes: the layer packs its weights once, up front."""
    layout = ln.describe(name).input_layout
    shape = inputs[layout].shape
    args = dict(threads=threads, layout=layout, **layer.conv_args)
    layer_call = ln.Conv2d(w, algorithm=name, **args)
    return ln.workspace_bytes(name, shape, w.shape, **args), layer_call.workspace_bytes_for(shape)


results = []
for layer in chosen:
    inputs, w = make_inputs(layer)
    flops = layer.flops()
    for name in NAMES:
        if ln.supports(name, layer.x_shape(), layer.w_shape, **layer.conv_args):
            seconds = best_seconds(layer, name, MAX_THREADS, inputs, w)
            space, layer_space = workspaces(layer, name, MAX_THREADS, inputs, w)
            results.append(dict(layer=layer, algorithm=name, seconds=seconds, gflops=flops / seconds / 1e9,
                                workspace=space, layer_workspace=layer_space))
print(f"timed {len(results)} (layer, algorithm) pairs on {MAX_THREADS} thread(s)")
'''),
code(r'''
def pareto_front(rows):
    """The rows no other row beats in both time and workspace, by increasing workspace."""
    front, fastest = [], np.inf
    for row in sorted(rows, key=lambda r: (r["workspace"], r["seconds"])):
        if row["seconds"] < fastest:
            front.append(row)
            fastest = row["seconds"]
    return front


for layer in chosen:
    rows = sorted((r for r in results if r["layer"] is layer), key=lambda r: r["seconds"])
    front = pareto_front(rows)
    print(f"\n{layer.label}: x {layer.x_shape()}, w {layer.w_shape}, {layer.conv_args}")
    print(f"{'algorithm':<26} {'ms':>8} {'GFLOP/s':>8} {'workspace':>12} {'as a layer':>12}  Pareto")
    for r in rows:
        print(f"{r['algorithm']:<26} {r['seconds'] * 1e3:8.2f} {r['gflops']:8.1f} {r['workspace'] / 1024:>8.1f} KiB "
              f"{r['layer_workspace'] / 1024:>8.1f} KiB  {'*' if r in front else ''}")
'''),
markdown(r'''
### Time against workspace

One panel per layer; each point is one algorithm. Filled markers are `ln.conv2d` calls, whose workspace
includes the weights the algorithm repacks on every call; an open marker joined to it shows the same
algorithm as an `ln.Conv2d` layer, which packs its weights once when it is built, so a call only needs the
scratch (drawn at the same time: skipping the packing only makes the call faster). The dashed line is the
Pareto front of the filled points: no algorithm is both faster and smaller than one on it.

Memory is on a log scale, which has no place for zero: algorithms with **no workspace at all** (the loop
nest, and any algorithm whose weights and input are already GEMM operands) are drawn at a floor value,
16 times below the smallest non-zero workspace, in the grey band.
'''),
code(r'''
nonzero = [r[key] for r in results for key in ("workspace", "layer_workspace") if r[key] > 0]
FLOOR = 2.0 ** np.floor(np.log2(min(nonzero) / 16))


def placed(nbytes):
    return nbytes if nbytes > 0 else FLOOR


fig, axes = plt.subplots(2, (len(chosen) + 1) // 2, figsize=(13, 9), squeeze=False)
for ax, layer in zip(axes.flat, chosen):
    rows = [r for r in results if r["layer"] is layer]
    for r in rows:
        ms = r["seconds"] * 1e3
        ax.scatter(placed(r["workspace"]), ms, s=45, zorder=3, **STYLES[r["algorithm"]])
        if r["layer_workspace"] != r["workspace"]:
            ax.plot([placed(r["workspace"]), placed(r["layer_workspace"])], [ms, ms], color="0.7", lw=0.8)
            style = STYLES[r["algorithm"]]
            ax.scatter(placed(r["layer_workspace"]), ms, s=45, marker=style["marker"], facecolors="none",
                       edgecolors=style["color"])
    front = pareto_front(rows)
    ax.step([placed(r["workspace"]) for r in front], [r["seconds"] * 1e3 for r in front], where="post",
            color="k", ls="--", lw=1)
    ax.axvspan(FLOOR / 2, FLOOR * 2, color="0.9", zorder=0)
    ax.text(FLOOR, 0.5, "0 B (no workspace)", transform=ax.get_xaxis_transform(), rotation=90, ha="center",
            va="center", fontsize=8, color="0.4")
    ax.set(xscale="log", yscale="log", xlabel="workspace per call (bytes, log scale)",
           ylabel="time per call (ms, log scale)", title=f"{layer.label} ({MAX_THREADS} threads)")
for ax in axes.flat[len(chosen):]:
    ax.axis("off")
handles = [plt.Line2D([], [], ls="", label=n, **STYLES[n])
           for n in NAMES if any(r["algorithm"] == n for r in results)]
handles += [plt.Line2D([], [], marker="o", ls="", mfc="none", mec="0.4", label="as a Conv2d layer (weights prepacked)"),
            plt.Line2D([], [], color="k", ls="--", label="Pareto front")]
fig.legend(handles=handles, loc="center right", fontsize=8)
fig.suptitle("Time against workspace, every algorithm, batch 1")
fig.tight_layout(rect=(0, 0, 0.8, 1))
'''),
markdown(r'''
### Is the workspace real?

`workspace_bytes` is a statement; `lowmem_numba.bench.memory.peak_added_bytes` checks it against the operating
system: it runs one warm call in a fresh process and reports how much the peak resident memory grew.
The OS counts whole pages (4 KiB), and a buffer of a few KiB can land in pages that are already resident,
so small workspaces may show as 0. One layer, three ways of running it (`"layer:<name>"` measures an
`ln.Conv2d` call, with its weights packed beforehand):
'''),
code(r'''
from lowmem_numba.bench.memory import peak_added_bytes

layer = next(layer for layer in chosen if layer.name == SCALING_LAYER)
for target, name in (("im2col-copy-short-ab-ki",) * 2, ("kn2row-aa-ab",) * 2, ("layer:kn2row-aa-ab", "kn2row-aa-ab")):
    measured = peak_added_bytes(target, layer.x_shape(), layer.w_shape, threads=MAX_THREADS, repeats=1,
                                **layer.conv_args)
    row = next(r for r in results if r["layer"] is layer and r["algorithm"] == name)
    stated = row["layer_workspace"] if target.startswith("layer:") else row["workspace"]
    seen = "unavailable" if measured.peak_added_bytes is None else f"{measured.peak_added_bytes / 1024:8.1f} KiB"
    print(f"{target:<24} stated {stated / 1024:8.1f} KiB   measured by the OS {seen}")
'''),
markdown(r'''
### Thread scaling

The same calls on 1 to `MAX_THREADS` threads (`threads=` sets Numba's thread count for one call; BLAS
runs single-threaded inside each of them), on one layer. On the left the speed, on the right the
speed-up over one thread against the ideal (dotted).
'''),
code(r'''
layer = next(layer for layer in chosen if layer.name == SCALING_LAYER)
inputs, w = make_inputs(layer)
flops = layer.flops()
thread_counts = list(range(1, MAX_THREADS + 1))
scaling = {name: [best_seconds(layer, name, t, inputs, w) for t in thread_counts]
           for name in NAMES if ln.supports(name, layer.x_shape(), layer.w_shape, **layer.conv_args)}

fig, (speed, speedup) = plt.subplots(1, 2, figsize=(13, 5))
for name, seconds in scaling.items():
    speed.plot(thread_counts, [flops / s / 1e9 for s in seconds], "-", label=name, **STYLES[name])
    speedup.plot(thread_counts, [seconds[0] / s for s in seconds], "-", **STYLES[name])
speedup.plot(thread_counts, thread_counts, "k:", label="ideal")
speed.set(xlabel="threads", ylabel="speed (GFLOP/s)", title=f"{layer.label}: speed")
speedup.set(xlabel="threads", ylabel="speed-up over 1 thread (x)", title=f"{layer.label}: speed-up")
for ax in (speed, speedup):
    ax.set_xticks(thread_counts)
fig.legend(*speed.get_legend_handles_labels(), loc="center right", fontsize=8)
speedup.legend()
fig.tight_layout(rect=(0, 0, 0.8, 1))

print(f"workspace (KiB) on {layer.label} by thread count (it changes where threads get their own scratch):")
print(f"{'algorithm':<26}" + "".join(f"{t:>10}" for t in thread_counts))
for name in scaling:
    print(f"{name:<26}" + "".join(f"{workspaces(layer, name, t, inputs, w)[0] / 1024:>10.1f}" for t in thread_counts))
'''),
]


SCHEDULER = [
markdown(r'''
# The scheduler under a shrinking memory budget

`ln.plan(x_shape, w_shape, ..., memory_limit=...)` picks the algorithm and thread count of a convolution:
every registered algorithm at every candidate thread count is a candidate, those that do not support
the layer or whose workspace exceeds the budget are rejected, and the rest are ranked by the time the
calibrated cost model predicts. `conv2d(..., algorithm="auto", memory_limit=...)` runs what it picks.
The cost model is calibrated once per machine (about a second, the first time) and cached in the user
cache directory; its predictions are deterministic.

This notebook shrinks the budget for a few layers and shows how the choice changes.
'''),
code(r'''
import matplotlib.pyplot as plt
import numpy as np

import lowmem_numba as ln
import lowmem_numba.bench

LAYERS = [("alexnet", "conv2"), ("vgg16", "conv1_2"), ("googlenet", "inception3a_3x3"), ("mobilenet", "dw3")]
chosen = [next(layer for layer in ln.bench.layers(network) if layer.name == name) for network, name in LAYERS]


def plan_for(layer, memory_limit=None):
    return ln.plan(layer.x_shape(), layer.w_shape, memory_limit=memory_limit, **layer.conv_args)


def size(nbytes):
    """Bytes in B, KiB or MiB."""
    if nbytes < 1024:
        return f"{nbytes} B"
    return f"{nbytes / 1024:.1f} KiB" if nbytes < 1 << 20 else f"{nbytes / (1 << 20):.1f} MiB"


unlimited = plan_for(chosen[0])
print(unlimited.explain())
'''),
markdown(r'''
`explain()` lists every candidate with its workspace, its predicted time and why it was not chosen.

### Sweeping the budget

The plan can only change where the budget crosses some candidate's workspace, so planning at each
candidate's workspace (and at 0) traces the whole step function: for a budget between two of these
values, the plan is the one at the lower value.
'''),
code(r'''
def sweep(layer):
    """[(budget, plan)] at every budget where the plan can change, largest first, down to 0."""
    candidates = plan_for(layer).candidates
    budgets = sorted({c.workspace_bytes for c in candidates if c.workspace_bytes is not None} | {0}, reverse=True)
    return [(budget, plan_for(layer, budget)) for budget in budgets]


sweeps = {layer.label: sweep(layer) for layer in chosen}
for layer in chosen:
    print(f"\n{layer.label}: x {layer.x_shape()}, w {layer.w_shape}, {layer.conv_args}")
    print(f"{'budget at least':>16}  {'algorithm':<26} {'threads':>7} {'workspace':>12} {'predicted ms':>12}")
    previous = None
    for budget, p in reversed(sweeps[layer.label]):
        if (p.algorithm, p.threads) != previous:
            print(f"{size(budget):>16}  {p.algorithm:<26} {p.threads:>7} {size(p.workspace_bytes):>12} "
                  f"{p.predicted_seconds * 1e3:>12.3f}")
            previous = (p.algorithm, p.threads)
'''),
markdown(r'''
The same sweeps as pictures: the predicted time of the plan against the budget, coloured by the
algorithm chosen (a dot where the choice changes; the thread count is in the table above). A budget of 0
is drawn at a floor value, in the grey band, because a log axis has no zero.
'''),
code(r'''
chosen_names = list(dict.fromkeys(p.algorithm for points in sweeps.values() for _, p in points))
COLOURS = {name: plt.get_cmap("tab10")(k % 10) for k, name in enumerate(chosen_names)}
nonzero = [b for points in sweeps.values() for b, _ in points if b > 0]
FLOOR = 2.0 ** np.floor(np.log2(min(nonzero) / 16))

fig, axes = plt.subplots(2, (len(chosen) + 1) // 2, figsize=(13, 9), squeeze=False)
for ax, layer in zip(axes.flat, chosen):
    points = sorted(sweeps[layer.label], key=lambda point: point[0])  # by increasing budget
    # The plan at a budget holds up to the next budget; the last one holds beyond.
    edges = [max(budget, FLOOR) for budget, _ in points] + [points[-1][0] * 8]
    previous = None
    for k, (_, p) in enumerate(points):
        ms = p.predicted_seconds * 1e3
        ax.hlines(ms, edges[k], edges[k + 1], color=COLOURS[p.algorithm], lw=2.5)
        if previous is None or (p.algorithm, p.threads) != (previous.algorithm, previous.threads):
            ax.plot(edges[k], ms, "o", color=COLOURS[p.algorithm])
            if previous is not None:
                ax.vlines(edges[k], ms, previous.predicted_seconds * 1e3, color="0.6", lw=0.8)
        previous = p
    ax.axvspan(FLOOR / 2, FLOOR * 2, color="0.9", zorder=0)
    ax.text(FLOOR, 0.5, "0 B (no workspace)", transform=ax.get_xaxis_transform(), rotation=90, ha="center",
            va="center", fontsize=8, color="0.4")
    ax.set(xscale="log", yscale="log", xlabel="memory budget (bytes, log scale)",
           ylabel="predicted time of the plan (ms, log scale)", title=layer.label)
for ax in axes.flat[len(chosen):]:
    ax.axis("off")
fig.legend(handles=[plt.Line2D([], [], color=COLOURS[n], lw=2.5, label=n) for n in chosen_names],
           loc="center right", fontsize=8, title="chosen algorithm")
fig.suptitle("The scheduler's choice as the memory budget shrinks (cost model, batch 1)")
fig.tight_layout(rect=(0, 0, 0.8, 1))
'''),
markdown(r'''
And as one table, on a fixed grid of budgets (algorithm, threads):
'''),
code(r'''
GRID = [None] + [2 ** k for k in range(26, 9, -2)] + [0]
width = 30
print(f"{'budget':>10}  " + "".join(f"{layer.label:<{width}}" for layer in chosen))
for budget in GRID:
    label = "none" if budget is None else size(budget)
    cells = []
    for layer in chosen:
        p = plan_for(layer, budget)
        cells.append(f"{p.algorithm} ({p.threads})")
    print(f"{label:>10}  " + "".join(f"{cell:<{width}}" for cell in cells))
'''),
markdown(r'''
### Why, under a tight budget

With a budget, `explain()` also says which candidates were over it:
'''),
code(r'''
print(plan_for(chosen[1], memory_limit=1 << 20).explain())
'''),
markdown(r'''
### Running under a budget

`conv2d(..., algorithm="auto", memory_limit=...)` runs the planned algorithm, and `workspace_bytes("auto",
...)` states what that will use. Checked here against a numpy reference on a small layer, at a few budgets:
'''),
code(r'''
layer = next(layer for layer in ln.bench.layers("googlenet") if layer.name == "inception5a_5x5")
rng = np.random.default_rng(0)
x = rng.standard_normal(layer.x_shape(), dtype=np.float32)
w = rng.standard_normal(layer.w_shape, dtype=np.float32)


def reference_conv2d(x, w, pad):
    """Stride-1 cross-correlation of an NCHW batch in float64, by explicit zero padding."""
    kh, kw = w.shape[2:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    return sum(np.einsum("mc,nchw->nmhw", w[:, :, i, j], xp[:, :, i:i + ho, j:j + wo])
               for i in range(kh) for j in range(kw))


assert layer.stride == 1 and layer.groups == 1
expected = reference_conv2d(x, w, layer.padding)
for budget in (None, 64 << 10, 4 << 10, 0):
    y = ln.conv2d(x, w, memory_limit=budget, **layer.conv_args)
    assert np.allclose(y, expected, rtol=1e-4, atol=1e-3)
    used = ln.workspace_bytes("auto", x.shape, w.shape, memory_limit=budget, **layer.conv_args)
    assert budget is None or used <= budget
    print(f"budget {'none' if budget is None else size(budget):>10}: {plan_for(layer, budget).algorithm:<26} "
          f"workspace {size(used)}")
'''),
markdown(r'''
### Weights packed once

The workspace of a `conv2d` call includes the weights that most GEMM-based algorithms repack on every
call (for kn2row-aa, $M C K^2$ values: on this layer nearly all of its workspace). An `ln.Conv2d` layer
packs them once, when it is built, and keeps them (its `persistent_bytes`); its `memory_limit` bounds only
the per-call workspace. Under the same budget it can therefore keep a fast algorithm where `conv2d` has to
fall back to the loop nest (times are best of 3 calls):
'''),
code(r'''
print(f"{'budget':>10}  {'conv2d workspace':>16} {'ms':>7}   {'Conv2d workspace':>16} {'ms':>7}  {'kept weights':>12}")
for budget in (None, 64 << 10, 0):
    conv = ln.Conv2d(w, memory_limit=budget, input_shape=x.shape, **layer.conv_args)
    assert np.allclose(conv(x), expected, rtol=1e-4, atol=1e-3)
    functional_ms = ln.bench.measure(lambda: ln.conv2d(x, w, memory_limit=budget, **layer.conv_args), repeats=3).best * 1e3
    layer_ms = ln.bench.measure(lambda: conv(x), repeats=3).best * 1e3
    functional_bytes = ln.workspace_bytes("auto", x.shape, w.shape, memory_limit=budget, **layer.conv_args)
    print(f"{'none' if budget is None else size(budget):>10}  {size(functional_bytes):>16} {functional_ms:7.2f}   "
          f"{size(conv.workspace_bytes):>16} {layer_ms:7.2f}  {size(conv.persistent_bytes):>12}")
'''),
markdown(r'''
### A whole network

`ln.plan_network` plans each layer of a network run one layer after another. The layers share one
arena (a `Workspace`) as large as the largest workspace, so the budget bounds each layer's workspace,
not their sum:
'''),
code(r'''
for budget in (None, 1 << 20, 0):
    print(ln.plan_network(ln.bench.layers("alexnet"), memory_limit=budget).explain(), end="\n\n")
'''),
markdown(r'''
### Measured instead of predicted

`mode="measure"` times the candidates on the real shape instead (skipping those the model predicts far
slower) and caches the winner per shape and machine in the user cache directory
(`$LOWMEM_NUMBA_CACHE_DIR` overrides it). On one small layer, on one thread:
'''),
code(r'''
measured = ln.plan(layer.x_shape(), layer.w_shape, threads=1, mode="measure", **layer.conv_args)
predicted = ln.plan(layer.x_shape(), layer.w_shape, threads=1, **layer.conv_args)
print(f"measured choice:  {measured.algorithm}, {measured.predicted_seconds * 1e3:.3f} ms")
print(f"predicted choice: {predicted.algorithm}, {predicted.predicted_seconds * 1e3:.3f} ms")
print(measured.explain())
'''),
]


NOTEBOOKS = {
    "01_algorithms.ipynb": ALGORITHMS,
    "02_memory_vs_speed.ipynb": MEMORY_VS_SPEED,
    "03_scheduler.ipynb": SCHEDULER,
}


def notebook(cells) -> dict:
    """An nbformat 4 notebook without outputs from ``(kind, source)`` cells.

    Parameters
    ----------
    cells : list of tuple of str
        ``("markdown" or "code", source)``.

    Returns
    -------
    dict
        The notebook as its JSON structure.
    """
    built = []
    for index, (kind, text) in enumerate(cells):
        lines = textwrap.dedent(text).strip("\n").splitlines(keepends=True)
        cell = {"cell_type": kind, "id": f"cell-{index:02d}", "metadata": {}, "source": lines}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        built.append(cell)
    return {
        "cells": built,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def render(name) -> str:
    """The file contents of notebook ``name`` (a key of :data:`NOTEBOOKS`)."""
    return json.dumps(notebook(NOTEBOOKS[name]), indent=1, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    """Write the notebooks, or with ``--check`` report those that differ from their source here."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if a notebook is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name in NOTEBOOKS:
        path = HERE / name
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date (run python {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
