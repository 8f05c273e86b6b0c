"""What one call of an algorithm will do: the plan that sizes it, runs it and prices it.

A family describes one run of its kernel, on a geometry and a thread count, as
a :class:`KernelPlan`: the tiling its kernel is handed, its scratch, the GEMMs
it issues and the elements it moves outside BLAS.  :class:`CallPlan` adds what
a call does around the kernel (weights packed per call, images converted one at
a time when the call's layout is not the kernel's).  The execution layer runs a
call from its plan, ``workspace_bytes`` reads the same plan, and the cost model
prices it without knowing any family (as in XNNPACK, where the reshape step
that sizes the workspace stores the parallel plan that setup then runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from ._tuning import ALIGNED_OUTPUT_MIN_BYTES, PACK_COST, TRANSPOSE_COST

#: Bytes of one float32 element.
FLOAT32_BYTES = 4
#: Bytes of one cache line: every buffer the library allocates starts on one
#: (see ``_workspace.aligned_empty``).
CACHE_LINE_BYTES = 64


class Gemms(NamedTuple):
    """``count`` GEMMs of (m x k) @ (k x n), as issued (after tiling)."""

    count: int
    m: int
    n: int
    k: int

    @property
    def flops(self) -> int:
        """Multiply-adds counted as two flops."""
        return 2 * self.count * self.m * self.n * self.k


@dataclass(frozen=True)
class KernelPlan:
    """One run of a family's kernel.

    Attributes
    ----------
    tiling : tuple
        The family's own decisions (thread split, band sizes...), handed to its
        kernel as they are.
    scratch_elements : int
        float32 scratch the run needs, all threads together.
    gemms : tuple of Gemms
        Every GEMM the run issues, grouped by shape.
    moved_elements : int
        float32 elements read and written outside BLAS (patch building,
        lowering, shift-adds).
    direct_flops : int
        Arithmetic done by the family's own scalar loops rather than a GEMM
        engine (priced at the rate of the plain loop nest).
    vector_flops : int
        Arithmetic done by the family's own vectorised loops (loops LLVM
        vectorises along a unit-stride dimension, e.g. the depthwise runs),
        counted as computed: padded lanes and zero taps included.  Priced at
        the calibrated rate of such loops, several times the loop nest's.
    memory_elements : int
        float32 elements streamed from main memory, in plain-copy
        equivalents, that more threads do not move faster: they share the
        memory's bandwidth.  Priced at the copy rate (itself memory's),
        without the threads' speed-up.
    planar_line_reads : int
        Cache lines a register tile's reduction steps read from planar
        (NCHW) input: every step (tile, channel block, input channel, tap)
        broadcasts its pixels from another plane or row, reading the lines
        they span.  Priced at the calibrated cost of one
        (``planar_line_seconds``), plus ``planar_line_page_seconds`` per
        page of ``planar_plane_pages``.
    planar_plane_pages : float
        The pages an input plane of those lines spans (at most
        ``UKERNEL_PLANAR_PAGES_MAX``), over the taps of a kernel row, which
        read the lines the row's first tap fetched: a planar line costs more
        the larger the planes a tile steps between, once per kernel row.
        0 without planar lines.
    parallel_items : int
        Independent items the run hands to ``prange``: more threads than
        items cannot help.
    balance : float
        Wall time of the parallel items on the threads of the plan relative
        to a perfect share of their work (>= 1): items of unequal work leave
        threads idle.  1 when the family's items are (about) equal.
    launches : int
        Kernel launches of the run, parallel regions or not (each has a
        fixed cost).
    serial : bool
        Whether the run starts no parallel region: its kernels run on the
        calling thread alone (see :attr:`CallPlan.sets_threads`).
    tile_kernel : str, optional
        The register tile's curve this run is priced on, when not its
        algorithm's (direct-pixels' staged layers: ``"pixels_staged"``).
    output_follows_input : bool
        Whether the run's vector stores line up with its vector loads when
        the output starts as far from a cache line as the input (see
        :attr:`CallPlan.aligns_output`).
    """

    tiling: tuple = ()
    scratch_elements: int = 0
    gemms: tuple = ()
    moved_elements: int = 0
    direct_flops: int = 0
    vector_flops: int = 0
    memory_elements: int = 0
    planar_line_reads: int = 0
    planar_plane_pages: float = 0.0
    parallel_items: int = 1
    launches: int = 1
    serial: bool = False
    tile_kernel: str | None = None
    balance: float = 1.0
    output_follows_input: bool = False

    def __post_init__(self):
        for name in ("scratch_elements", "moved_elements", "direct_flops", "vector_flops", "memory_elements",
                     "planar_line_reads", "parallel_items", "launches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"KernelPlan.{name} must be a non-negative int; got {value!r}")
        for name in ("serial", "output_follows_input"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"KernelPlan.{name} must be a bool; got {getattr(self, name)!r}")
        if not (isinstance(self.balance, (int, float)) and 1.0 <= self.balance < float("inf")):
            raise ValueError(f"KernelPlan.balance must be a finite number >= 1; got {self.balance!r}")
        if not (isinstance(self.planar_plane_pages, (int, float)) and 0.0 <= self.planar_plane_pages < float("inf")):
            raise ValueError("KernelPlan.planar_plane_pages must be a finite number >= 0; "
                             f"got {self.planar_plane_pages!r}")
        object.__setattr__(self, "gemms", tuple(Gemms(*(int(v) for v in shape)) for shape in self.gemms))


@dataclass(frozen=True)
class CallPlan:
    """Everything one call of an algorithm will do.

    Attributes
    ----------
    algorithm : str
        Registered name.
    geometry : ConvGeometry
        The call's geometry (its whole batch).
    threads : int
    layout : {"NCHW", "NHWC"}
        Layout of the call's input and output.
    prepacked : bool
        Whether the weights arrive packed (a layer) or are packed per call.
    run_geometry : ConvGeometry
        Geometry of each kernel run: the call's, or one image of it when the
        call's layout differs from the kernel's and images are converted one
        at a time.
    runs : int
        Kernel runs (1, the batch size when converting, 0 for an empty batch).
    kernel : KernelPlan
        What each run does.
    packed_weight_elements : int
        float32 elements of weights packed per call (0 if none or prepacked).
    convert_in_elements, convert_out_elements : int
        Per-image layout buffers (0 when the layouts match).
    packing_cost : float
        Price of each packed element, in plain-copy elements (the
        algorithm's ``pack_cost``: a transposition, or Winograd's transform).
    packing_scratch_elements : int
        float32 scratch the per-call packing works in (0 if none).
    gemms_on_blas : bool
        Whether the GEMMs run on BLAS, which copies both operands into its
        own panels on every call (the cost model prices that traffic); False
        for the library's micro-kernel, whose weights come packed.
    pack_launches : int
        Parallel regions the per-call packing starts (the algorithm's).
    tile_kernel : str
        The register tile that runs the GEMMs when not on BLAS, priced on its
        own curve: ``"ukernel"``, ``"pixels"`` or ``"pixels_staged"`` (the
        kernel plan's, else the algorithm's).
    """

    algorithm: str
    geometry: object
    threads: int
    layout: str
    prepacked: bool
    run_geometry: object
    runs: int
    kernel: KernelPlan
    packed_weight_elements: int
    convert_in_elements: int
    convert_out_elements: int
    packing_cost: float = PACK_COST
    packing_scratch_elements: int = 0
    gemms_on_blas: bool = True
    pack_launches: int = 1
    tile_kernel: str = "ukernel"

    @cached_property
    def workspace_elements(self) -> int:
        """float32 elements of temporary memory: packed weights (and their
        packing's scratch), scratch, layout buffers (read on every call:
        worked out once)."""
        if self.runs == 0:
            return 0
        return (self.packed_weight_elements + self.packing_scratch_elements + self.kernel.scratch_elements
                + self.convert_in_elements + self.convert_out_elements)

    @property
    def workspace_bytes(self) -> int:
        return FLOAT32_BYTES * self.workspace_elements

    @cached_property
    def sets_threads(self) -> bool:
        """Whether running the call sets the Numba and BLAS thread counts
        (:class:`~lowmem_numba._threads.kernel_threads`): unless nothing in
        it starts a parallel region (its kernel, a per-call packing of the
        weights, a layout conversion) or calls BLAS (read on every call:
        worked out once)."""
        return not (self.kernel.serial and not self.gemms_on_blas and not self.packed_weight_elements
                    and not self.convert_in_elements and not self.convert_out_elements)

    @cached_property
    def aligns_output(self) -> bool:
        """Whether a new output of the call is allocated at its input's
        offset from a cache line: the kernel writes the output itself
        (one run, no layout conversion), its stores line up with its loads
        so (:attr:`KernelPlan.output_follows_input`), and the output is of at
        least ``ALIGNED_OUTPUT_MIN_BYTES`` (read on every call: worked out
        once)."""
        g = self.geometry
        return (self.kernel.output_follows_input and self.runs == 1 and not self.convert_out_elements
                and FLOAT32_BYTES * g.batch * g.out_channels * g.out_height * g.out_width
                >= ALIGNED_OUTPUT_MIN_BYTES)

    @property
    def gemms(self) -> tuple:
        """Every GEMM of the call."""
        return tuple(Gemms(g.count * self.runs, g.m, g.n, g.k) for g in self.kernel.gemms)

    @property
    def moved_elements(self) -> int:
        """Elements moved outside BLAS by the call, in plain-copy equivalents:
        the kernel's, plus per-call weight packing (``packing_cost`` copies
        per element) and layout conversions, which are transpositions
        (``TRANSPOSE_COST`` copies per element)."""
        if self.runs == 0:
            return 0
        convert = (self.convert_in_elements + self.convert_out_elements) * TRANSPOSE_COST
        return self.packed_weight_elements * self.packing_cost + self.runs * (self.kernel.moved_elements + convert)

    @property
    def direct_flops(self) -> int:
        """Arithmetic outside any GEMM: the kernel's own loops."""
        return self.runs * self.kernel.direct_flops

    @property
    def vector_flops(self) -> int:
        """Arithmetic of the kernel's own vectorised loops, all runs."""
        return self.runs * self.kernel.vector_flops

    @property
    def memory_elements(self) -> int:
        """Elements the kernel streams from memory at a bandwidth its threads share, all runs."""
        return self.runs * self.kernel.memory_elements

    @property
    def planar_line_reads(self) -> int:
        """Cache lines the register tiles' steps read from planar input, all runs."""
        return self.runs * self.kernel.planar_line_reads

    @property
    def planar_plane_pages(self) -> float:
        """Pages an input plane of the planar lines spans (see KernelPlan)."""
        return self.kernel.planar_plane_pages

    @property
    def launches(self) -> int:
        """Kernel launches of the call: packing, each run, each conversion."""
        if self.runs == 0:
            return 0
        converts = (self.convert_in_elements > 0) + (self.convert_out_elements > 0)
        packing = self.pack_launches if self.packed_weight_elements > 0 else 0
        return packing + self.runs * (self.kernel.launches + converts)

    @property
    def parallel_items(self) -> int:
        return self.kernel.parallel_items

    @property
    def balance(self) -> float:
        """The kernel's items' wall time relative to a perfect share (see KernelPlan)."""
        return self.kernel.balance
