"""Conv2d: a convolution layer that packs its weights once and keeps its workspace."""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from ._execute import execute, prepare_weights
from . import _registry as registry
from ._api import choose_algorithm, flat_bias, kernel_input, new_output, prepare_call, resolve_algorithm
from ._costmodel import loaded_calibration
from ._geometry import (
    check_array,
    check_flag,
    check_bias,
    check_memory_limit,
    check_out,
    check_threads,
    geometry_for,
    parse_params,
)
from ._layout import check_layout, to_nchw_shape
from ._threads import max_threads
from ._workspace import Workspace, check_workspace

_FLOAT32 = np.dtype(np.float32)


class _Repeat(NamedTuple):
    """A layer's last call, repeated on an input of the same shape and dtype
    while nothing it was planned under changed: the layer's planning
    attributes (assigning one drops the repeat, see
    :data:`_PLANNED_ATTRIBUTES`) and the process's planning state
    (:func:`_process_state`).  It skips the validation and memo lookup of
    :func:`~lowmem_numba._api.planned_call` (building and hashing the memo key
    alone took 2.1 of a 12.8 us call); an ``out`` is still checked."""

    x_shape: tuple
    process_state: tuple
    auto: bool
    plan: object
    out_shape: tuple
    weights: np.ndarray


#: The attributes a layer's calls are planned from: assigning any of them (even
#: an equal value: a new bias array is validated) plans the next call again.
_PLANNED_ATTRIBUTES = frozenset({"algorithm", "threads", "layout", "memory_limit", "winograd", "bias", "workspace"})


def _process_state(auto: bool) -> tuple:
    """What a plan depends on beyond the layer: the thread limit, the set of
    registered algorithms and, for "auto", the calibration in force (as
    :func:`~lowmem_numba._api.planned_call` keys its memo)."""
    return max_threads(), registry.generation(), loaded_calibration() if auto else None


class Conv2d:
    """A 2-D convolution layer with prepacked weights and a reusable workspace.

    Parameters
    ----------
    weight : numpy.ndarray, float32
        Kernels, shape (M, C/groups, kh, kw).  Packed (or copied) at
        construction: later changes to the array do not affect the layer.
    bias : numpy.ndarray, float32, optional
        Shape (M,); copied.
    stride, padding, dilation, groups
        As for :func:`lowmem_numba.conv2d`, parsed and validated here by the
        same code (afterwards the attributes hold them normalised: pairs of
        ints, and padding as ((top, bottom), (left, right))).
    algorithm : str, default "auto"
        A registered name, or "auto": chosen per input shape, once per shape.
        With "auto" the layer keeps a copy of the weights to pack for whichever
        algorithm a new shape gets.
    threads : int, optional
        Threads for every call; default all of Numba's.
    layout : {"NCHW", "NHWC"}, default "NCHW"
        Layout of inputs and outputs.
    workspace : Workspace, optional
        Arena to carve temporary memory from, e.g. one shared by the layers of a
        network (see :meth:`Workspace.shared_by`).  Default: the layer's own,
        growing once to what its calls need.
    input_shape : tuple of int, optional
        Shape of the inputs to come (in ``layout``).  When given, the layer is
        planned and validated for it now and :attr:`workspace_bytes` is known.
    memory_limit : int, optional
        Workspace budget in bytes for "auto" (packed weights are persistent
        and not counted); a named algorithm over it is an error.
    winograd : bool, default True
        Whether "auto" may choose a Winograd algorithm (see
        :func:`lowmem_numba.conv2d`).

    Raises
    ------
    TypeError, ValueError
        As :func:`lowmem_numba.conv2d`, for the arguments given here.

    Examples
    --------
    >>> layer = Conv2d(w, b, padding=1, algorithm="kn2row-aa-ab")
    >>> y = layer(x)                 # sizes the workspace
    >>> y = layer(x, out=y)          # allocates nothing
    """

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                 algorithm="auto", threads=None, layout="NCHW",
                 workspace: Optional[Workspace] = None, input_shape=None, memory_limit=None,
                 winograd=True):
        # Every argument is validated, by the same code as conv2d's, before
        # anything is copied or packed.
        check_array(weight, "weight")
        params = parse_params(weight.shape, stride, padding, dilation, groups)
        layout = check_layout(layout)
        threads = check_threads(threads, max_threads())
        memory_limit = check_memory_limit(memory_limit)
        winograd = check_flag(winograd, "winograd")
        check_workspace(workspace)
        # Support (stride, kernel size, and the GEMM sizes that depend on the
        # weights alone) is decided on the smallest input the kernel fits; each
        # call checks its real input shape again.
        nominal = geometry_for(params.smallest_input_shape(), params)
        check_bias(bias, nominal)
        auto = isinstance(algorithm, str) and algorithm == "auto"
        chosen = None if auto else resolve_algorithm(algorithm, nominal, winograd)
        self._params = params
        self.weight_shape = params.weight_shape
        self.stride, self.dilation, self.groups = params.stride, params.dilation, params.groups
        self.padding = params.padding_pairs
        self.layout, self.threads, self.memory_limit = layout, threads, memory_limit
        self.winograd = winograd
        self.algorithm = algorithm
        planned = None
        if input_shape is not None:
            geometry = self._geometry(input_shape)
            planned = choose_algorithm(algorithm, geometry, threads, layout, memory_limit, prepacked=True,
                                       winograd=winograd)

        self.workspace = workspace if workspace is not None else Workspace()
        self.bias = None if bias is None else np.array(bias, dtype=np.float32, copy=True)
        self._raw = None
        self._prepared: dict[str, np.ndarray] = {}
        if auto:
            self._raw = np.array(weight, dtype=np.float32, copy=True).reshape(-1)
        else:
            self._prepared[chosen.name] = prepare_weights(chosen, np.ascontiguousarray(weight).reshape(-1),
                                                          nominal)
        self._planned_bytes = None
        self._repeat: Optional[_Repeat] = None  # the last call, to repeat cheaply
        if planned is not None:
            planned_algorithm, planned_threads = planned
            self._planned_bytes = planned_algorithm.plan(geometry, planned_threads, layout, prepacked=True,
                                                         memory_limit=memory_limit).workspace_bytes
            if auto and geometry.batch:
                self._weights_for(planned_algorithm, nominal)

    def _geometry(self, x_shape):
        return geometry_for(to_nchw_shape(x_shape, self.layout), self._params)

    def _weights_for(self, algorithm, geometry):
        weights = self._prepared.get(algorithm.name)
        if weights is None:
            weights = prepare_weights(algorithm, self._raw, geometry)
            self._prepared[algorithm.name] = weights
        return weights

    def __call__(self, x, out=None) -> np.ndarray:
        """Convolve ``x``.

        Parameters
        ----------
        x : numpy.ndarray, float32
            Input in the layer's layout, batched or not (shapes as for
            :func:`lowmem_numba.conv2d`).
        out : numpy.ndarray, float32, optional
            C-contiguous array of the output shape to write into.

        Returns
        -------
        numpy.ndarray, float32
            ``out`` if given.
        """
        repeat = self._repeat
        # Each step here runs after the previous call's kernel has evicted the
        # interpreter's data: what took 1-2 us in a loop of its own took 4-6
        # (GoogLeNet's 480->16 on 14x14).  Hence one attribute check on
        # assignment instead of a per-call comparison of the layer's state.
        if (repeat is not None and type(x) is np.ndarray and x.dtype is _FLOAT32 and x.shape == repeat.x_shape
                and repeat.process_state == _process_state(repeat.auto)):
            if out is None:
                out = new_output(repeat.plan, repeat.out_shape, x)
            else:
                check_out(out, repeat.out_shape, {"x": x, "bias": self.bias})
            execute(repeat.plan, kernel_input(x), repeat.weights, flat_bias(self.bias), out.reshape(-1),
                    self.workspace)
            return out
        call = prepare_call(x, self._params, self.bias, self.algorithm, self.threads, out,
                            self.layout, self.workspace, {}, self.memory_limit, prepacked=True,
                            winograd=self.winograd)
        auto = isinstance(self.algorithm, str) and self.algorithm == "auto"
        state = _process_state(auto)  # after the call's planning, which may load the calibration
        self._planned_bytes = call.plan.workspace_bytes
        if call.out.size == 0:  # an empty batch: no weights to pack, nothing to compute
            return call.out
        weights = self._weights_for(call.algorithm, call.geometry)
        self._repeat = _Repeat(x.shape, state, auto, call.plan, call.out.shape, weights)
        execute(call.plan, kernel_input(x), weights, flat_bias(self.bias), call.out.reshape(-1), call.workspace)
        return call.out

    def __setattr__(self, name, value):
        if name in _PLANNED_ATTRIBUTES:
            object.__setattr__(self, "_repeat", None)
        object.__setattr__(self, name, value)

    def workspace_bytes_for(self, x_shape) -> int:
        """Temporary memory of a call on an input of ``x_shape`` (in the layer's layout).

        Packed weights are not included: they are :attr:`persistent_bytes`.
        """
        geometry = self._geometry(x_shape)
        algorithm, threads = choose_algorithm(self.algorithm, geometry, self.threads, self.layout,
                                              self.memory_limit, prepacked=True, winograd=self.winograd)
        return algorithm.plan(geometry, threads, self.layout, prepacked=True,
                              memory_limit=self.memory_limit).workspace_bytes

    def plan_for(self, x_shape):
        """The scheduler's :class:`lowmem_numba.Plan` for a call on ``x_shape``.

        Raises
        ------
        ValueError
            If the layer runs a named algorithm (there is nothing to plan).
        """
        from ._scheduler import plan

        if not (isinstance(self.algorithm, str) and self.algorithm == "auto"):
            raise ValueError(f"this layer always runs {self.algorithm!r}; plan_for is for algorithm=\"auto\"")
        return plan(x_shape, self.weight_shape, self.stride, self.padding, self.dilation, self.groups,
                    memory_limit=self.memory_limit, threads=self.threads, layout=self.layout, prepacked=True,
                    winograd=self.winograd)

    @property
    def workspace_bytes(self) -> Optional[int]:
        """Temporary memory of a call on the planned (or latest) input shape;
        None before the layer knows any input shape."""
        return self._planned_bytes

    @property
    def persistent_bytes(self) -> int:
        """Memory the layer keeps across calls for its weights (packed forms,
        plus the copy that "auto" packs from)."""
        raw = 0 if self._raw is None else self._raw.nbytes
        return raw + sum(w.nbytes for w in self._prepared.values())

    def __repr__(self) -> str:
        return (f"Conv2d(weight {self.weight_shape}, stride={self.stride!r}, padding={self.padding!r}, "
                f"dilation={self.dilation!r}, groups={self.groups!r}, algorithm={self.algorithm!r}, "
                f"layout={self.layout!r})")

