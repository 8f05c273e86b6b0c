"""The algorithm registry: what each algorithm is, supports, and plans to do.

An :class:`Algorithm` describes an operator; its family module supplies the
functions.  ``plan_kernel`` describes one run of the family's kernel as a
:class:`~lowmem_numba._plan.KernelPlan` (tiling, scratch, GEMMs, elements moved),
and :meth:`Algorithm.plan` wraps it into the :class:`~lowmem_numba._plan.CallPlan`
of a whole call: the one the execution layer runs, ``workspace_bytes`` reads
and the cost model prices.  Weights are split off so that a layer object can
keep them packed across calls while the functional API packs them per call:
``packed_weight_elements`` (zero when the kernel reads the weights as given),
unless the family's kernel packs them itself, as it goes
(``plan_kernel_packing``).

Adding a family is one module: define its kernels, its ``plan_kernel`` and its
``compute``, call :func:`register`, and import the module in
``lowmem_numba/algorithms/__init__.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

from ._plan import FLOAT32_BYTES, CallPlan, KernelPlan
from ._geometry import ConvGeometry
from ._memo import Memo
from ._tuning import PACK_COST


@dataclass(frozen=True)
class Algorithm:
    """One registered convolution algorithm.

    Attributes
    ----------
    name : str
        Registered name, spelled as in the paper's library.
    family : str
        Family it belongs to (``"direct"``, ``"im2col"``, ``"kn2row"``...).
    summary : str
        One line on what it does.
    workspace_formula : str
        The order of its workspace in elements, for documentation.
    unsupported : callable
        ``unsupported(geometry) -> str or None``: why this configuration is not
        handled, or None when it is.
    packed_weight_elements : callable
        ``(geometry) -> int``: float32 elements of the repacked weights (0 if none).
    pack_weights : callable or None
        ``(weight_flat, geometry, dest_flat)``: write the packed weights.
    plan_kernel : callable
        ``(geometry, threads) -> KernelPlan``: what one run of the kernel on
        ``geometry`` does with ``threads`` threads.
    compute : callable
        ``(x_flat, weights_flat, bias, out_flat, scratch, geometry, kernel_plan)``:
        run the kernel as planned; ``weights_flat`` is packed when packing is used.
    input_layout, output_layout : {"NCHW", "NHWC"}
        The kernel's own layouts.
    claims : str
        The configurations it supports, in words (``unsupported`` decides).
    pack_cost : float
        Price of one packed element of a per-call ``pack_weights``, in
        plain-copy elements (``perf/pack_speed.py`` measures it); default
        ``PACK_COST``.
    pack_scratch_elements : callable or None
        ``(geometry, threads) -> int``: float32 scratch ``pack_weights`` needs;
        it then takes it as a fourth argument (None: it needs none).
    plan_kernel_packing : callable or None
        ``(geometry, threads, scratch_elements) -> KernelPlan or None``: for a
        family whose kernel can pack the weights itself, the plan of a one-run
        call whose weights arrive as given, with at most ``scratch_elements``
        of scratch (None: no ``memory_limit``); ``compute`` then gets them
        unpacked, and no packed copy is made (None from it, or no such
        function: the call packs them first).
    plan_kernel_within : callable or None
        ``(geometry, threads, scratch_elements) -> KernelPlan``: for a family
        whose tiling can shrink, the plan whose scratch fits that many
        elements (its smallest if none does).  Used for calls under a
        ``memory_limit``; None: the tiling does not depend on it.
    pack_launches : int
        Parallel regions its per-call ``pack_weights`` starts: 1 for a
        ``prange`` packing, 0 for a serial one (tiny weights, such as
        depthwise taps, where a launch would cost more than the copy).
    calls_blas : bool
        Whether its kernel calls BLAS (sgemm), which the execution layer then
        holds at one thread; kernels on the library's own micro-kernel or
        loops skip that (a few microseconds per call).
    tile_kernel : {"ukernel", "pixels"}
        Which of the library's register tiles runs its GEMMs when it does not
        call BLAS (each has its own calibrated efficiency curve): the
        channel-lane tile, or direct-pixels' pixel-lane one (whose plans for
        staged layers name its other curve, ``"pixels_staged"``).
    """

    name: str
    family: str
    summary: str
    workspace_formula: str
    unsupported: Callable[[ConvGeometry], Optional[str]]
    packed_weight_elements: Callable[[ConvGeometry], int]
    pack_weights: Optional[Callable]
    plan_kernel: Callable[[ConvGeometry, int], KernelPlan]
    compute: Callable
    input_layout: str = "NCHW"
    output_layout: str = "NCHW"
    claims: str = "any kernel, stride, padding, dilation and groups"
    pack_cost: float = PACK_COST
    pack_scratch_elements: Optional[Callable[[ConvGeometry, int], int]] = None
    plan_kernel_packing: Optional[Callable[[ConvGeometry, int, Optional[int]], Optional[KernelPlan]]] = None
    plan_kernel_within: Optional[Callable[[ConvGeometry, int, int], KernelPlan]] = None
    calls_blas: bool = True
    pack_launches: int = 1
    tile_kernel: str = "ukernel"

    def plan(self, geometry: ConvGeometry, threads: int, layout: str = "NCHW",
             prepacked: bool = False, memory_limit: Optional[int] = None) -> CallPlan:
        """The plan of one call (memoised: a warm call pays for no planning).

        Parameters
        ----------
        geometry : ConvGeometry
            Validated, and supported by this algorithm.
        threads : int
            Thread count of the call.
        layout : {"NCHW", "NHWC"}
            Layout of the call's input and output.
        prepacked : bool
            Whether the weights arrive packed (not counted as workspace).
        memory_limit : int, optional
            Workspace budget of the call in bytes: a family with
            ``plan_kernel_within`` shrinks its tiling to fit it.

        Returns
        -------
        CallPlan
        """
        limit = memory_limit if self.plan_kernel_within is not None else None
        return _plan_call(self, geometry, threads, layout, bool(prepacked), limit)

    def workspace_elements(self, geometry: ConvGeometry, threads: int, layout: str = "NCHW",
                           prepacked: bool = False) -> int:
        """Temporary float32 elements of one call (see :meth:`plan`).

        An empty batch (N = 0) needs none: such a call computes nothing.
        """
        return self.plan(geometry, threads, layout, prepacked).workspace_elements


def _plan_call(algorithm: Algorithm, g: ConvGeometry, threads: int, layout: str,
               prepacked: bool, memory_limit: Optional[int] = None) -> CallPlan:
    """:meth:`Algorithm.plan`, memoised (``_memo.clear_all`` forgets it too)."""
    key = (algorithm, g, threads, layout, prepacked, memory_limit)
    plan = _plans.get(key)
    if plan is None:
        plan = _make_plan(algorithm, g, threads, layout, prepacked, memory_limit)
        _plans.put(key, plan)
    return plan


#: Call plans per algorithm and call (each a few hundred bytes).
_plans = Memo(4096)


def _make_plan(algorithm: Algorithm, g: ConvGeometry, threads: int, layout: str,
               prepacked: bool, memory_limit: Optional[int]) -> CallPlan:
    converting = layout != algorithm.input_layout or layout != algorithm.output_layout
    into = g.in_channels * g.height * g.width if layout != algorithm.input_layout else 0
    back = g.out_channels * g.out_height * g.out_width if layout != algorithm.output_layout else 0
    # A call in the other layout converts and runs one image at a time.
    run_geometry = dataclasses.replace(g, batch=1) if converting and g.batch else g
    runs = 0 if g.batch == 0 else (g.batch if converting else 1)
    packed = 0 if prepacked or runs == 0 else algorithm.packed_weight_elements(g)
    # Scratch elements the kernel may use under the limit, besides the layout buffers.
    budget = None if memory_limit is None else max(0, memory_limit // FLOAT32_BYTES - (into + back))
    kernel = None
    if packed and runs == 1 and algorithm.plan_kernel_packing is not None:
        kernel = algorithm.plan_kernel_packing(run_geometry, threads, budget)
        if kernel is not None:  # the kernel packs the weights itself
            packed = 0
    packing_scratch = (algorithm.pack_scratch_elements(g, threads)
                       if packed and algorithm.pack_scratch_elements else 0)
    if kernel is None and memory_limit is None:
        kernel = algorithm.plan_kernel(run_geometry, threads)
    elif kernel is None:
        kernel = algorithm.plan_kernel_within(run_geometry, threads, max(0, budget - (packed + packing_scratch)))
    if not isinstance(kernel, KernelPlan):
        raise TypeError(f"{algorithm.name}: plan_kernel must return a KernelPlan; got "
                        f"{type(kernel).__name__}")
    return CallPlan(algorithm.name, g, threads, layout, prepacked, run_geometry, runs, kernel, packed,
                    into, back, algorithm.pack_cost, packing_scratch, algorithm.calls_blas, algorithm.pack_launches,
                    kernel.tile_kernel or algorithm.tile_kernel)


_REGISTRY: dict[str, Algorithm] = {}
_generation = 0


def register(algorithm: Algorithm) -> Algorithm:
    """Add an algorithm (a family module calls this at import).

    Raises
    ------
    TypeError
        If ``algorithm`` is not an :class:`Algorithm`.
    ValueError
        If its name is taken.
    """
    global _generation
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"register takes an Algorithm; got {type(algorithm).__name__}")
    if algorithm.name in _REGISTRY:
        raise ValueError(f"algorithm {algorithm.name!r} is already registered")
    _REGISTRY[algorithm.name] = algorithm
    _generation += 1
    return algorithm


def unregister(name: str) -> None:
    """Remove an algorithm (for tests and experiments with extra families)."""
    global _generation
    del _REGISTRY[get(name).name]
    _generation += 1


def generation() -> int:
    """Changes whenever the set of algorithms does: plans memoised under
    another generation considered other candidates."""
    return _generation


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name) -> Algorithm:
    """Look up a registered algorithm by name.

    Raises
    ------
    TypeError
        If ``name`` is not a string.
    ValueError
        If no algorithm has that name; the message lists the valid names.
    """
    if not isinstance(name, str):
        raise TypeError(f"algorithm must be a string; got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(repr(n) for n in _REGISTRY)
        raise ValueError(f"unknown algorithm {name!r}; valid names are: {valid}") from None
